"""The burst: a backlog produced far faster than the worker consumes, watched through /metrics.

A worker runs in latency mode on a trickle of events; then `burst_events` arrive at once. Every
0.25 s the worker's own metrics are scraped: the controller's mode and batch size, the lag gauges
(messages and seconds), paused partitions and in-flight events, and the mean size of the batches
processed since the previous scrape. The run ends once the lag is back to zero and the controller
back in latency mode. Used by `stream-infer bench` (a figure in docs/operating.md) and by the tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from stream_infer.tools.workerproc import WorkerProcess


@dataclass
class BurstSample:
    t: float  # seconds since the burst started (negative: before it)
    mode: str
    controller_batch_size: float
    mean_batch_size: float  # of the batches processed since the previous sample (0 if none)
    lag_messages: float  # summed over partitions
    lag_seconds: float  # the worst partition
    paused_partitions: float
    in_flight_events: float
    pauses: float  # counter: times paused so far
    predictions: float  # counter


def scrape(worker: WorkerProcess, pipeline: str) -> tuple[str, dict[str, float]]:
    """The pipeline's controller mode and its other metrics of interest, as one flat dict."""
    mode = "latency"
    out = {"lag_messages": 0.0, "lag_seconds": 0.0, "batch_sum": 0.0, "batch_count": 0.0}
    for family in text_string_to_metric_families(worker.metrics_text()):
        for s in family.samples:
            if s.labels.get("pipeline") != pipeline:
                continue
            name, value = s.name, s.value
            if name == "stream_infer_consumer_lag_messages":
                out["lag_messages"] += value
            elif name == "stream_infer_consumer_lag_seconds":
                out["lag_seconds"] = max(out["lag_seconds"], value if value == value else 0.0)
            elif name == "stream_infer_controller_mode" and value == 1:
                mode = s.labels["mode"]
            elif name == "stream_infer_batch_size_sum":
                out["batch_sum"] = value
            elif name == "stream_infer_batch_size_count":
                out["batch_count"] = value
            elif name in (
                "stream_infer_controller_batch_size",
                "stream_infer_paused_partitions",
                "stream_infer_in_flight_events",
                "stream_infer_pauses_total",
                "stream_infer_predictions_total",
            ):
                out[name.removeprefix("stream_infer_").removesuffix("_total")] = value
    return mode, out


class Sampler:
    """Scrapes a worker every `every` seconds on a thread until stopped."""

    def __init__(self, worker: WorkerProcess, pipeline: str, every: float = 0.25) -> None:
        self.worker, self.pipeline, self.every = worker, pipeline, every
        self.samples: list[BurstSample] = []
        self.errors: list[str] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="burst-sampler", daemon=True)
        self._last = (0.0, 0.0)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                mode, m = scrape(self.worker, self.pipeline)
            except Exception as err:  # a worker busy or restarting: note it, keep sampling
                self.errors.append(f"{time.monotonic() - self.t0:.2f}: {type(err).__name__}: {err}")
            else:
                d_sum, d_count = m["batch_sum"] - self._last[0], m["batch_count"] - self._last[1]
                self._last = (m["batch_sum"], m["batch_count"])
                self.samples.append(
                    BurstSample(
                        round(time.monotonic() - self.t0, 3),
                        mode,
                        m.get("controller_batch_size", 0.0),
                        round(d_sum / d_count, 1) if d_count else 0.0,
                        m["lag_messages"],
                        round(m["lag_seconds"], 3),
                        m.get("paused_partitions", 0.0),
                        m.get("in_flight_events", 0.0),
                        m.get("pauses", 0.0),
                        m.get("predictions", 0.0),
                    )
                )
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_burst(
    worker: WorkerProcess,
    pipeline: str,
    *,
    produce_burst: Callable[[], float],
    expected_predictions: int,
    trickle: Callable[[], object] | None = None,  # its result is not used
    drain_timeout: float = 300.0,
) -> dict:
    """Sample `worker` (started and ready) through a trickle, then a burst, until drained: the
    predictions counter has reached `expected_predictions` (trickle and burst together), the lag
    gauges read 0 and the controller is back in latency mode.

    `produce_burst` produces the backlog as fast as it can and returns seconds taken. Returns the
    samples (t = 0 when the burst starts) and a summary.
    """
    sampler = Sampler(worker, pipeline).start()
    if trickle is not None:
        trickle()
    time.sleep(1.5)  # a few latency-mode samples before the burst
    burst_at = time.monotonic()
    produce_seconds = produce_burst()
    deadline = time.monotonic() + drain_timeout
    drained_at = None
    try:
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker exited during the burst:\n{worker.log_tail()}")
            last = sampler.samples[-1] if sampler.samples else None
            if last is None or last.predictions < expected_predictions or last.lag_messages > 0:
                continue
            drained_at = drained_at or time.monotonic()
            if last.mode == "latency":
                time.sleep(1.0)  # a last second of samples after the return
                break
        else:
            raise RuntimeError(f"the burst did not drain within {drain_timeout:.0f} s")
    finally:
        sampler.stop()
    offset = burst_at - sampler.t0
    samples = [dict(asdict(s), t=round(s.t - offset, 3)) for s in sampler.samples]
    after = [s for s in samples if s["t"] >= 0]
    throughput = [s for s in after if s["mode"] == "throughput"]
    return {
        "samples": samples,
        "produce_seconds": round(produce_seconds, 2),
        "drain_seconds": round(drained_at - burst_at, 2) if drained_at else None,
        "peak_lag_messages": max((s["lag_messages"] for s in after), default=0),
        "peak_lag_seconds": max((s["lag_seconds"] for s in after), default=0),
        "peak_controller_batch_size": max((s["controller_batch_size"] for s in after), default=0),
        "peak_mean_batch_size": max((s["mean_batch_size"] for s in after), default=0),
        "throughput_mode_seconds": round(throughput[-1]["t"] - throughput[0]["t"], 2) if throughput else 0.0,
        "pauses": max((s["pauses"] for s in samples), default=0),
        "scrape_errors": sampler.errors[:20],
        "ended_at": round(time.monotonic() - burst_at, 2),
    }


def plot_burst(result: dict, path: Path) -> None:
    """Batch size (controller's and processed) and lag over time, with the mode shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] for s in samples]
    fig, (ax_b, ax_l) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax_b.step(t, [s["controller_batch_size"] for s in samples], where="post", label="controller batch size")
    ax_b.plot(t, [s["mean_batch_size"] or float("nan") for s in samples], ".", ms=3, label="mean batch processed")
    ax_b.set_ylabel("events per batch")
    ax_b.set_yscale("log", base=2)
    ax_l.plot(t, [s["lag_messages"] for s in samples], label="lag, messages (all partitions)")
    ax_l.set_ylabel("lag, messages")
    ax_s = ax_l.twinx()
    ax_s.plot(t, [s["lag_seconds"] for s in samples], color="#d9822b", label="lag, seconds (worst partition)")
    ax_s.set_ylabel("lag, seconds")
    for ax in (ax_b, ax_l):
        for i, s in enumerate(samples[:-1]):
            if s["mode"] == "throughput":
                ax.axvspan(s["t"], samples[i + 1]["t"], color="#f3d9b1", lw=0)
            if s["paused_partitions"]:
                ax.axvspan(s["t"], samples[i + 1]["t"], color="#e39b9b", lw=0, alpha=0.6)
    ax_b.legend(loc="upper right")
    ax_l.legend(loc="upper left")
    ax_s.legend(loc="upper right")
    ax_l.set_xlabel("seconds since the burst started (shaded: throughput mode; red: partitions paused)")
    ax_b.set_title(f"Burst of {result.get('burst_events', 0):,} events: controller and lag")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
