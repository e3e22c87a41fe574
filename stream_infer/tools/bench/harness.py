"""`stream-infer bench`: the service against two yardsticks, in one run, on one local broker.

* service:   the worker as users run it (one process, the `engines` pipeline);
* service_eos: the same with processing_guarantee = exactly_once (outputs in the checkpoint's
  transaction), to price that guarantee in the same run;
* per_event: the same worker with max_batch_size = 1 (inference per event, the naive way);
* ceiling:   a minimal loop with no framework (:mod:`stream_infer.tools.bench.ceiling`).

Each drains a backlog preloaded into a 6-partition topic. Throughput is read the way operators
read it: from the consumer group's committed offsets, sampled every 0.25 s, over the middle of the
drain (20% to 80% of the backlog) so start-up and the tail do not count. Latency is measured on a
second topic at offered loads of 10 events/s and 10/50/80% of the service's measured maximum:
end-to-end = the prediction's broker append time (when it was acknowledged) minus the input's
broker append time (when it became consumable); both topics use LogAppendTime. The latency worker
first gets an unmeasured warm-up at the 50% load (at least 5 s, then until the broker's JIT
compilers have gone quiet, see bench/jvm.py; then until its controller is back in latency mode):
the phases measure a running service on a warm broker, not their first seconds.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from stream_infer.config import load_config
from stream_infer.configs import demo_config_data, keep_pipelines, write_config
from stream_infer.kafka.admin import create_topics, topic_partitions
from stream_infer.tools.bench.jvm import JitWatch, stat_cpu_ticks
from stream_infer.tools.devkafka import local
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.replay import cmapss_events, produce_waiting
from stream_infer.tools.workerproc import WorkerProcess

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

PARTITIONS = 6


@dataclass
class Plan:
    """How big a run is. `quick` fits in about 3 minutes; the full run in about 12."""

    backlog: int
    ceiling_backlog: int
    per_event_seconds: float
    latency_seconds: float
    rss_backlog: int  # the service drains this many in all (RSS bound is checked over it)
    low_rate_seconds: float = 20.0  # the 10 events/s phase: long enough for a p99 of 200 events
    burst_events: int = 200_000  # the burst phase: a backlog produced at once into a running worker
    warmup_seconds: float = 5.0  # the latency worker's warm-up at the 50% load: at least this long,
    warmup_max_seconds: float = 60.0  # then until the broker's JIT has settled, at most this long

    @classmethod
    def smoke(cls) -> Plan:
        """A seconds-long run that exercises every phase (the test suite's check of the harness)."""
        return cls(
            backlog=4_000,
            ceiling_backlog=4_000,
            per_event_seconds=2,
            latency_seconds=2,
            rss_backlog=4_000,
            low_rate_seconds=2,
            burst_events=20_000,
            warmup_seconds=0.5,
            warmup_max_seconds=1.0,
        )

    @classmethod
    def make(cls, quick: bool) -> Plan:
        """The quick run's sizes or the full run's, field by field."""
        # Quick: a 300k backlog. At 25-45k events/s the middle 60% of a smaller drain lasts only a
        # few commit intervals (0.5 s), and the ratio between two such windows swung by +-15%.
        backlog = 300_000 if quick else 1_000_000
        return cls(
            backlog=backlog,
            ceiling_backlog=backlog,
            per_event_seconds=5 if quick else 20,
            latency_seconds=6 if quick else 20,
            rss_backlog=backlog if quick else 5_000_000,
            burst_events=60_000 if quick else 500_000,
            warmup_max_seconds=25 if quick else 90,
        )


def engines_config(
    path: Path,
    *,
    group: str,
    input_topic: str,
    output_prefix: str,
    batching: dict | None = None,
    guarantee: str | None = None,
    replication: int | None = None,
    worker: dict | None = None,
) -> Path:
    """Write the demo config's engines pipeline alone, on the given topics and group, with
    [pipelines.batching] and [worker] keys overridden, the processing guarantee and the
    replication factor set (None: the default); paths made absolute. Returns `path`."""
    data = keep_pipelines(demo_config_data(), "engines")
    data["kafka"]["group_id"] = group
    if replication is not None:
        data["kafka"]["replication_factor"] = replication
    engines = data["pipelines"][0]
    engines["input_topic"] = input_topic
    topics = engines["topics"]
    for role, topic in topics.items():  # engines.predictions -> <output_prefix>.predictions, ...
        topics[role] = f"{output_prefix}.{topic.removeprefix('engines.')}"
    engines["batching"].update(batching or {})
    data["worker"].update(worker or {})
    if guarantee is not None:
        data["worker"]["processing_guarantee"] = guarantee
    return write_config(data, path)


# --- events ----------------------------------------------------------------------------------


def engine_events(count: int) -> list[tuple[bytes, bytes]]:
    """`count` engine events: C-MAPSS train in replay order, repeated with new unit ids (a fleet)."""
    base = [orjson.loads(value) for _, value in cmapss_events("train")]
    out: list[tuple[bytes, bytes]] = []
    rep = 0
    while len(out) < count:
        for event in base[: count - len(out)]:
            unit = event["unit"] + 1000 * rep
            out.append((str(unit).encode(), orjson.dumps(dict(event, unit=unit))))
        rep += 1
    return out


def preload(bootstrap: str, topic: str, count: int, chunk: int = 200_000) -> float:
    """Produce `count` events as fast as possible (generated in chunks: memory stays small)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
            "log_level": 3,
        }
    )
    started = time.monotonic()
    sent = 0
    template = engine_events(min(count, chunk))
    while sent < count:
        for key, value in template[: count - sent]:
            produce_waiting(producer, topic, key, value)
            sent += 1
        producer.poll(0)
    producer.flush(120)
    return time.monotonic() - started


# --- process measurements --------------------------------------------------------------------


def proc_stats(pid: int) -> dict:
    """CPU seconds (user+system), current and peak RSS in MB, from /proc."""
    try:
        cpu = stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / os.sysconf("SC_CLK_TCK")
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        rss = int(status["VmRSS"].split()[0]) / 1024
        peak = int(status["VmHWM"].split()[0]) / 1024
        return {"cpu_s": round(cpu, 2), "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1)}
    except (OSError, KeyError, IndexError):
        return {}


@dataclass
class Progress:
    """Committed offsets of a group (summed over partitions) over time, plus the process's RSS."""

    bootstrap: str
    group: str
    pid: int
    samples: list[tuple[float, int, float]] = field(default_factory=list)  # (t, committed, rss_mb)

    topic: str = ""
    last_stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A consumer that never subscribes only reads the group's commits. (The admin API's
        # ListConsumerGroupOffsets crashed librdkafka 2.16 here while the fresh broker was still
        # creating __consumer_offsets.)
        self._reader = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": self.group, "enable.auto.commit": False, "log_level": 3}
        )
        self._partitions = [TopicPartition(tp.topic, tp.partition) for tp in topic_partitions(self.bootstrap, [self.topic])]

    def committed(self) -> int:
        try:
            result = self._reader.committed(self._partitions, timeout=10)
        except KafkaException:
            return self.samples[-1][1] if self.samples else 0
        return sum(tp.offset for tp in result if tp.offset > 0)

    def close(self) -> None:
        self._reader.close()

    def sample(self) -> int:
        value = self.committed()
        stats = proc_stats(self.pid)
        if stats:  # the process may have exited (the ceiling stops itself when idle)
            self.last_stats = stats
        self.samples.append((time.monotonic(), value, stats.get("rss_mb", 0.0)))
        return value

    def final_stats(self) -> dict:
        """CPU and RSS now, or as last seen if the process has already exited."""
        return proc_stats(self.pid) or self.last_stats

    def run_until(self, done: Callable[[int], bool], timeout: float, alive: Callable[[], bool], every: float = 0.25) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.sample()) or not alive():
                return
            time.sleep(every)
        raise RuntimeError(f"group {self.group} did not finish within {timeout:.0f} s")

    def rate_between(self, low: int, high: int) -> float:
        """Events/s while the committed count went from `low` to `high` (interpolated)."""
        t = np.array([s[0] for s in self.samples])
        c = np.array([s[1] for s in self.samples], dtype=np.float64)
        if c[-1] < high:
            high = c[-1]
        t_low, t_high = np.interp(low, c, t), np.interp(high, c, t)
        if t_high - t_low < 0.5:
            # Drained between two samples (a tiny backlog): the whole run is the only window.
            moving = np.nonzero(c > 0)[0]
            first = max(int(moving[0]) - 1, 0) if len(moving) else 0
            return float((c[-1] - c[first]) / max(t[-1] - t[first], 1e-9))
        return float((high - low) / (t_high - t_low))

    def rate_window(self, skip: float) -> float:
        """Events/s over the samples after the first `skip` seconds."""
        start = self.samples[0][0] + skip
        window = [s for s in self.samples if s[0] >= start]
        if len(window) < 2:
            window = self.samples[-2:]
        return (window[-1][1] - window[0][1]) / max(window[-1][0] - window[0][0], 1e-9)


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Bench:
    """One run on one broker: its topics, groups and configs (named after `run_id`), the phases in
    order, and `results`, which each phase adds its figures to."""

    bootstrap: str
    workdir: Path
    plan: Plan
    echo: Callable[[str], None]
    broker_pid: int | None = None  # the local broker this run started; None for one given by KAFKA_BOOTSTRAP_SERVERS
    run_id: str = field(default_factory=lambda: f"bench{int(time.time())}")

    def __post_init__(self) -> None:
        self.input = f"{self.run_id}.engines"  # the backlog the throughput phases drain
        self.results: dict = {"plan": self.plan.__dict__, "throughput_eps": {}, "process": {}, "latency_ms": {}}

    def config(
        self, mode: str, *, input_topic: str | None = None, batch: int | None = None, batching: dict | None = None
    ) -> Path:
        """A config with only the engines pipeline, on this run's topics, with its own group;
        mode `service_eos` is the service with processing_guarantee = exactly_once."""
        overrides = dict(batching or {})
        if batch is not None:
            overrides["max_batch_size"] = batch
        return engines_config(
            self.workdir / f"{mode}.toml",
            group=f"{self.run_id}-{mode}",
            input_topic=input_topic or self.input,
            output_prefix=f"{self.run_id}-{mode}",
            batching=overrides,
            guarantee="exactly_once" if mode == "service_eos" else None,
        )

    def run(self) -> dict:
        plan = self.plan
        create_topics(self.bootstrap, [self.input], partitions=PARTITIONS)
        seconds = preload(self.bootstrap, self.input, plan.rss_backlog)
        self.echo(f"preloaded {plan.rss_backlog:,} events in {seconds:.1f} s")
        self._drain("ceiling", plan.ceiling_backlog)
        self._drain("service", plan.backlog, total=plan.rss_backlog)
        self._drain("service_eos", plan.backlog)
        self._per_event()
        LatencyPhases(self).run()
        self._burst()
        return self.results

    def _drain(self, mode: str, measure: int, total: int | None = None) -> None:
        total = total or measure
        group = f"{self.run_id}-{mode}"
        config = self.config(mode)
        alive: Callable[[], bool]
        stop: Callable[[], object]  # its result (an exit code, or None) is not used
        if mode == "ceiling":
            env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=self.bootstrap)
            log_file = open(self.workdir / "ceiling.log", "wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "stream_infer.tools.bench.ceiling", "-c", str(config), "--group", group, "--idle", "3"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            pid, alive, stop = proc.pid, lambda: proc.poll() is None, proc.terminate
        else:
            worker = WorkerProcess(config, self.bootstrap, self.workdir / mode).start()
            worker.wait_ready()
            process = worker.process
            pid, alive, stop = process.pid, lambda: process.poll() is None, worker.stop
        progress = Progress(self.bootstrap, group, pid, topic=self.input)
        progress.run_until(lambda c: c >= total, timeout=1800, alive=alive)
        stats = progress.final_stats()
        stop()
        progress.close()
        eps = progress.rate_between(int(0.2 * measure), int(0.8 * measure))
        self.results["throughput_eps"][mode] = round(eps)
        self.results["process"][mode] = {**stats, "events": progress.samples[-1][1]}
        if mode == "service":
            self.results["service_rss_mb"] = [(round(t - progress.samples[0][0], 2), c, r) for t, c, r in progress.samples]
        self.echo(_throughput_line(mode, eps, stats) + (f" (drained {total:,})" if total != measure else ""))

    def _per_event(self) -> None:
        group = f"{self.run_id}-per_event"
        worker = WorkerProcess(self.config("per_event", batch=1), self.bootstrap, self.workdir / "per_event").start()
        worker.wait_ready()
        progress = Progress(self.bootstrap, group, worker.process.pid, topic=self.input)
        started = time.monotonic()
        progress.run_until(
            lambda c: time.monotonic() - started > self.plan.per_event_seconds,
            timeout=600,
            alive=lambda: worker.process.poll() is None,
        )
        stats = progress.final_stats()
        worker.stop()
        progress.close()
        eps = progress.rate_window(skip=min(2.0, self.plan.per_event_seconds / 3))
        self.results["throughput_eps"]["per_event"] = round(eps)
        self.results["process"]["per_event"] = stats
        self.echo(_throughput_line("per_event", eps, stats))

    def _burst(self) -> None:
        """A backlog produced at once into a worker idling in latency mode (see bench/burst.py),
        with the demo's batching settings."""
        from stream_infer.tools.bench.burst import run_burst

        topic = f"{self.run_id}.burst"
        create_topics(self.bootstrap, [topic], partitions=PARTITIONS)
        config = self.config("burst", input_topic=topic)
        batching = load_config(config).pipelines[0].batching.model_dump()  # reported with the result
        worker = WorkerProcess(config, self.bootstrap, self.workdir / "burst", log_level="info").start()
        trickle = engine_events(30)
        count = self.plan.burst_events
        try:
            worker.wait_ready()
            result = run_burst(
                worker,
                "engines",
                trickle=lambda: paced(self.bootstrap, topic, trickle, rate=20),
                produce_burst=lambda: preload(self.bootstrap, topic, count),
                expected_predictions=len(trickle) + count,
            )
        finally:
            worker.stop()
        result.update(burst_events=count, batching=batching)
        self.results["burst"] = result
        self.echo(
            f"burst     {count:,} events produced in {result['produce_seconds']:.1f} s, drained in "
            f"{result['drain_seconds']:.1f} s; peak lag {result['peak_lag_messages']:,.0f} messages / "
            f"{result['peak_lag_seconds']:.1f} s; controller batch size up to {result['peak_controller_batch_size']:.0f} "
            f"(throughput mode {result['throughput_mode_seconds']:.1f} s); paused {result['pauses']:.0f} times"
        )


def _throughput_line(mode: str, eps: float, stats: dict) -> str:
    return f"{mode:<9} {eps:>9,.0f} events/s   cpu {stats.get('cpu_s', 0):.1f} s   peak RSS {stats.get('peak_rss_mb', 0):.0f} MB"


class LatencyPhases:
    """The latency phases of a run: one worker on a topic of its own, an unmeasured warm-up at the
    50% load, then each offered load in turn (see the module docstring); figures go to the run's
    results under `latency_warmup` and `latency_ms`."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.topic = f"{bench.run_id}.latency"
        self.predictions = f"{bench.run_id}-latency.predictions"

    def run(self) -> None:
        bench, topic, predictions = self.bench, self.topic, self.predictions
        # Broker append times on both sides: the input's is when it became consumable, the
        # prediction's when it was acknowledged. The load generator's own queueing is not counted.
        create_topics(
            bench.bootstrap, [topic, predictions], partitions=PARTITIONS, config={"message.timestamp.type": "LogAppendTime"}
        )
        worker = WorkerProcess(bench.config("latency", input_topic=topic), bench.bootstrap, bench.workdir / "latency").start()
        worker.wait_ready()
        service = bench.results["throughput_eps"]["service"]
        loads = {"10eps": 10.0, "10pct": 0.1 * service, "50pct": 0.5 * service, "80pct": 0.8 * service}
        # Latency comes from broker timestamps, so when the reader sees a record does not matter.
        reader = TopicReader(bench.bootstrap, [predictions], fetch_min_bytes=1_000_000)
        events = engine_events(int(max(loads.values()) * bench.plan.latency_seconds) + 1000)
        try:
            # Warm-up, not measured: a fresh worker on fresh topics pays one-off costs in its first
            # seconds (connections, the first checkpoint of each partition, the broker's first
            # index entries of each new partition: 30-60 ms stalls that were 2-3 of the 200 events
            # at 10 events/s), and the broker's JIT compiles its paths for a live stream of small
            # produce and fetch requests (the drains before did not use them): on this machine its
            # C2 thread took 0.35-0.47 of a core for more than a minute of such traffic, and its
            # request threads 0.5-0.7 instead of 0.24 warm. The phases measure the steady state,
            # as a running service sees it; the warm-up's own latency is reported beside them.
            bench.results["latency_warmup"] = self._warm_up(worker, reader, events, rate=loads["50pct"])
            for name, rate in loads.items():
                duration = bench.plan.latency_seconds if rate > 100 else bench.plan.low_rate_seconds
                count = max(int(rate * duration), 20)
                before = len(reader.records[predictions])
                paced(bench.bootstrap, topic, events[:count], rate)

                def arrived(before: int = before, count: int = count) -> bool:
                    return len(reader.records[predictions]) - before >= count

                reader.until(arrived, 120)
                lat, inside = latencies(reader.records[predictions][before:])
                pct = {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)}
                bench.results["latency_ms"][name] = {
                    "offered_eps": round(rate, 1),
                    "events": int(len(lat)),
                    **pct,
                    "in_worker_p50": round(float(np.percentile(inside, 50)), 1),
                    "in_worker_p99": round(float(np.percentile(inside, 99)), 1),
                }
                bench.echo(
                    f"latency at {name:<6} ({rate:>8,.0f} ev/s): p50 {pct['p50']:.1f} ms  p95 {pct['p95']:.1f} ms  p99 {pct['p99']:.1f} ms"
                    f"  (in worker p50 {np.percentile(inside, 50):.1f}, p99 {np.percentile(inside, 99):.1f})"
                )
        finally:
            reader.close()
            worker.stop()

    def _warm_up(self, worker: WorkerProcess, reader: TopicReader, events: list[tuple[bytes, bytes]], rate: float) -> dict:
        """The latency worker's unmeasured warm-up at `rate`: at least plan.warmup_seconds, then
        until the broker's JIT compilers have gone quiet (see bench/jvm.py), at most
        plan.warmup_max_seconds. With a broker this run did not start (no PID to watch): the
        minimum only. Returns what it did, with the warm-up's own latency (first and last 5 s)."""
        bench, plan = self.bench, self.bench.plan
        summary = warm_up(
            bench.bootstrap,
            self.topic,
            events,
            rate,
            worker=worker,
            reader=reader,
            predictions=self.predictions,
            pipeline="engines",
            broker_pid=bench.broker_pid,
            min_seconds=plan.warmup_seconds,
            max_seconds=plan.warmup_max_seconds,
        )
        bench.echo(summary.pop("line"))
        return summary


def warm_up(
    bootstrap: str,
    topic: str,
    events: list[tuple[bytes, bytes]],
    rate: float,
    *,
    worker: WorkerProcess,
    reader: TopicReader,
    predictions: str,
    pipeline: str,
    broker_pid: int | None,
    min_seconds: float,
    max_seconds: float,
) -> dict:
    """An unmeasured warm-up of `pipeline` at `rate` (events cycled from `events`): at least
    `min_seconds`, then until the broker's JIT compilers have gone quiet (see bench/jvm.py), at
    most `max_seconds`; with a broker this run did not start (`broker_pid` None) the minimum
    only. Waits for every warm-up prediction and for the batching controller to be back in
    latency mode, so the phase that follows starts from its load's steady state. Returns what it
    did (events sent, whether the JIT settled, the warm-up's own p99 in its first and last 5 s)
    and, under "line", a sentence saying so."""
    watch = JitWatch(broker_pid) if broker_pid else None

    def done(elapsed: float) -> bool:
        if watch is not None:
            watch.sample()
        if elapsed < min_seconds:
            return False
        return elapsed >= max_seconds or watch is None or watch.settled()

    before = len(reader.records[predictions])
    started = time.monotonic()
    sent = paced(bootstrap, topic, events, rate=rate, stop=done)
    seconds = time.monotonic() - started
    if not reader.until(lambda: len(reader.records[predictions]) - before >= sent, 120):
        raise RuntimeError(f"the warm-up's predictions did not all arrive within 120 s\n{worker.log_tail()}")
    # A warm-up backlog may have switched the controller to throughput mode.
    _wait_for_latency_mode(worker, pipeline, timeout=30)
    lat, _ = latencies(reader.records[predictions][before:])
    edge = max(1, int(rate * 5))
    jit_cores = None if watch is None else watch.cores()
    summary: dict = {
        "events": sent,
        "rate_eps": round(rate, 1),
        "seconds": round(seconds, 1),
        "broker_jit_settled": bool(watch and watch.settled()),
        "broker_jit_cores": None if jit_cores is None else round(jit_cores, 3),
        "p99_first_5s": round(float(np.percentile(lat[:edge], 99)), 1),
        "p99_last_5s": round(float(np.percentile(lat[-edge:], 99)), 1),
    }
    jit = (
        "broker PID unknown: minimum only"
        if watch is None
        else f"broker JIT {'settled' if summary['broker_jit_settled'] else 'still compiling'}, {summary['broker_jit_cores']} cores"
    )
    summary["line"] = (
        f"warm-up   {sent:,} events at {rate:,.0f} ev/s for {seconds:.0f} s ({jit}); p99 first 5 s "
        f"{summary['p99_first_5s']:.0f} ms, last 5 s {summary['p99_last_5s']:.0f} ms (not measured)"
    )
    return summary


def _wait_for_latency_mode(worker: WorkerProcess, pipeline: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f'stream_infer_controller_mode{{mode="latency",pipeline="{pipeline}"}} 1.0' in worker.metrics_text():
            return
        time.sleep(0.25)
    log.warning("the controller did not return to latency mode within %.0f s of the warm-up", timeout)


def latencies(records: list) -> tuple[np.ndarray, np.ndarray]:
    """End-to-end ms (prediction append time minus input append time) and in-worker ms (from
    fetching the batch to handing its outputs to the producer) of prediction records."""
    values = [r.json() for r in records]
    lat = np.array([r.timestamp_ms - v["source"]["timestamp_ms"] for r, v in zip(records, values)], dtype=np.float64)
    inside = np.array([v["latency_ms"] for v in values], dtype=np.float64)
    return lat, inside


def paced(
    bootstrap: str, topic: str, events: list[tuple[bytes, bytes]], rate: float, stop: Callable[[float], bool] | None = None
) -> int:
    """Produce at `rate` events/s against a schedule, in 5 ms steps (a sleep per event would cost
    the generator more CPU than the worker it measures); the topic stamps append times. Sends
    `events` once; with `stop`, cycles through them until stop(seconds elapsed) is true (asked
    every 0.25 s). Returns how many were sent, all acknowledged."""
    # linger.ms 5, librdkafka's default: one produce request per 5 ms step, as a real producer
    # would send them (at 1 ms the generator's requests were a fifth of the broker's load).
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1, "log_level": 3})
    started = time.monotonic()
    sent, count, ask_at = 0, len(events), 0.25
    while True:
        elapsed = time.monotonic() - started
        if stop is None:
            if sent >= count:
                break
            due = min(count, int(elapsed * rate) + 1)
        else:
            if elapsed >= ask_at:
                ask_at = elapsed + 0.25
                if stop(elapsed):
                    break
            due = int(elapsed * rate) + 1
        for i in range(sent, due):
            key, value = events[i % count]
            producer.produce(topic, key=key, value=value)
        sent = max(sent, due)
        producer.poll(0)
        time.sleep(0.005)
    if producer.flush(60):
        raise RuntimeError(f"the load generator could not deliver its events to {topic} within 60 s")
    return sent


def targets(results: dict, max_wait_ms: float) -> dict:
    """The issue's targets, as booleans with the figures they compare."""
    tp = results["throughput_eps"]
    lat = results["latency_ms"]
    return {
        "service_vs_ceiling": round(tp["service"] / tp["ceiling"], 3),
        "service_vs_per_event": round(tp["service"] / max(tp["per_event"], 1), 1),
        "exactly_once_vs_service": round(tp["service_eos"] / tp["service"], 3),
        "ok_exactly_once_ge_0.8_service": tp["service_eos"] >= 0.8 * tp["service"],
        "ok_service_ge_0.7_ceiling": tp["service"] >= 0.7 * tp["ceiling"],
        "ok_service_ge_20x_per_event": tp["service"] >= 20 * tp["per_event"],
        "ok_p99_at_50pct_le_max_wait_plus_25ms": lat["50pct"]["p99"] <= max_wait_ms + 25,
        "ok_p99_at_10eps_le_15ms": lat["10eps"]["p99"] <= 15,
        "ok_service_rss_lt_400mb": results["process"]["service"].get("peak_rss_mb", 1e9) < 400,
    }


@contextmanager
def broker(workdir: Path) -> Iterator[tuple[str, int | None]]:
    """(bootstrap, PID) of the broker a benchmark runs against: $KAFKA_BOOTSTRAP_SERVERS when set
    (PID None: not this run's to watch), else a local single broker under workdir/kafka, started
    here and stopped (its data wiped) on the way out."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given, None
        return
    cluster, _ = local.up(workdir / "kafka", port=0)
    try:
        yield cluster.bootstrap, cluster.nodes[0].pid
    finally:
        local.down(workdir / "kafka", wipe=True)


def run_bench(*, quick: bool, out_dir: Path, echo: Callable[[str], None] = print, plan: Plan | None = None) -> dict:
    plan = plan or Plan.make(quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stream-infer-bench-") as tmp:
        workdir = Path(tmp)
        started = time.monotonic()
        with broker(workdir) as (bootstrap, broker_pid):
            results = Bench(bootstrap, workdir, plan, echo, broker_pid=broker_pid).run()
    results["targets"] = targets(results, max_wait_ms=20.0)
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform}
    results["seconds"] = round(time.monotonic() - started, 1)
    results["quick"] = quick
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2))
    try:
        from stream_infer.tools.bench.burst import plot_burst
        from stream_infer.tools.bench.plot import plot

        plot(results, out_dir / "bench.png")
        if "burst" in results:
            plot_burst(results["burst"], out_dir / "burst.png")
    except ImportError:
        echo("matplotlib not installed: no PNG (pip install -e '.[bench]')")
    return results
