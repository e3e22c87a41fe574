"""One fault trial against real workers (subprocesses) on a real Kafka.

A trial: write a config for the `engines` pipeline on topics and a group of its own, create the
6-partition input topic and the output topics, start the scenario's workers, feed the looped
C-MAPSS stream at a fixed rate while the scenario injects its faults, then wait until every input
has a prediction (or the drain timeout passes), stop the workers and account: lost, duplicated
and mismatched predictions, and missing, unexpected and repeated alerts, against the in-process
reference, recovery after each fault, exits.
Workers that exit on their own are restarted, as a supervisor would (:mod:`.workers`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from stream_infer.config import ConfigError, PipelineConfig, load_config
from stream_infer.kafka.admin import admin_client, create_topics, group_lag
from stream_infer.kafka.retrying import retry_kafka
from stream_infer.tools.bench.harness import engines_config
from stream_infer.tools.devkafka import local
from stream_infer.tools.faults.reference import EventStream, Reference
from stream_infer.tools.faults.report import (
    Source,
    TrialResult,
    UnitCycle,
    WorkerExit,
    account,
    latency_max,
    predictions_seen,
    recovery_seconds,
)
from stream_infer.tools.faults.traffic import DELIVERY_TIMEOUT_MS, Feeder, PredictionWatcher
from stream_infer.tools.faults.workers import WorkerPool

log = logging.getLogger(__name__)

PARTITIONS = 6
GUARANTEES = ("at_least_once", "exactly_once")
# After the stream ends: how long every input may take to get its prediction before the rest
# count as lost, then how long without a new prediction before the count is final (late
# duplicates of a replay arrive in this window).
DRAIN_TIMEOUT_S = 30.0
SETTLE_S = 2.0
# How long the group may take to commit its last offsets once every input is predicted.
FINAL_COMMIT_S = 15.0
# A stop that takes longer is recorded as it is (and fails a rolling restart's limit of 10 s);
# past this the worker is killed so the trial can end.
STOP_TIMEOUT_S = 30.0


def write_config(path: Path, prefix: str, *, guarantee: str | None, replication: int) -> tuple[Path, list[str]]:
    """The demo's engines pipeline on topics `<prefix>.engines.*` and group `prefix`, with
    `processing_guarantee` under [worker] (omitted for None). Returns (path, notes).

    A worker that does not know the key rejects the config; at-least-once is then its only
    mode, so for "at_least_once" the key is left out (with a note), and "exactly_once" raises."""

    def write(guarantee: str | None) -> None:
        engines_config(
            path,
            group=prefix,
            input_topic=f"{prefix}.engines.telemetry",
            output_prefix=f"{prefix}.engines",
            guarantee=guarantee,
            replication=replication,
        )

    write(guarantee)
    try:
        load_config(path)
    except ConfigError as err:
        if guarantee is None or "processing_guarantee" not in str(err):
            raise
        if guarantee != "at_least_once":
            raise RuntimeError(f"this worker has no processing_guarantee setting ({err})") from None
        write(None)
        return path, ["processing_guarantee left out: this worker does not know the key (at-least-once is its only mode)"]
    return path, []


@dataclass(frozen=True)
class TrialSettings:
    """Where and how a trial runs: the same for every trial of a run but the cluster."""

    bootstrap: str
    work_dir: Path  # the trial's logs, config and result.json go to work_dir/trials/<prefix>
    stream: EventStream
    reference: Reference  # the uninterrupted run's predictions and alerts for `stream`
    rate: float  # input events per second
    duration: float  # seconds of stream
    replication: int = 1  # of the trial's topics
    cluster_dir: Path | None = None  # the local cluster's state folder: where broker PIDs are found
    stable_ids: bool = False  # each worker gets a stable STREAM_INFER_INSTANCE_ID (see .workers)


class TrialKafka:
    """A trial's view of the cluster, through one admin client: its topics (names starting with
    `prefix`), its consumer group (`prefix` too) and, on a local cluster, the brokers' processes.
    The reads marked "retried" are retried while a loaded cluster is slow to answer: the trial's
    own read must not fail the trial."""

    input_topic: str  # set by create_topics()

    def __init__(self, bootstrap: str, prefix: str, cluster_dir: Path | None) -> None:
        self.bootstrap, self.prefix, self.cluster_dir = bootstrap, prefix, cluster_dir
        self.group = prefix  # the input topic's consumer group
        self._admin = admin_client(bootstrap)

    def create_topics(self, pipeline: PipelineConfig, replication: int) -> None:
        """The pipeline's input and outputs with the input's partition count; with replication 3
        every one of them gets min.insync.replicas 2, so acks=all means two copies. Returns once the
        metadata lists them all."""
        topics = pipeline.topics
        extra = {"min.insync.replicas": "2"} if replication >= 3 else {}
        names = [t for t in (pipeline.input_topic, topics.predictions, topics.alerts, topics.dead_letters) if t is not None]
        create_topics(self.bootstrap, names, partitions=PARTITIONS, replication=replication, config=extra)
        self.input_topic = pipeline.input_topic
        self._wait_for_topics(names)

    def _wait_for_topics(self, names: list[str], timeout: float = 15.0) -> None:
        """Until metadata lists every topic with all its partitions: a created topic reaches the
        broker's metadata a moment after the creation answers, and a reader assigned before that
        fails to find it."""
        deadline = time.monotonic() + timeout
        while True:
            topics = self._admin.list_topics(timeout=10).topics
            if all(name in topics and len(topics[name].partitions) == PARTITIONS for name in names):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {names} not in the cluster's metadata {timeout:.0f} s after creation")
            time.sleep(0.2)

    def input_leaders(self) -> dict[int, int]:
        """Input partition -> id of the broker leading it now (retried)."""
        topic = self.input_topic
        meta = retry_kafka(
            lambda: self._admin.list_topics(topic, timeout=10), timeout=60, what="reading the input topic's leaders"
        ).topics[topic]
        return {p: info.leader for p, info in meta.partitions.items()}

    def broker_pid(self, node_id: int) -> int:
        """PID of the running broker process of `node_id`, from the local cluster's state."""
        if self.cluster_dir is None:
            raise RuntimeError("killing a broker needs a local cluster started by the harness")
        cluster = local.Cluster.load(self.cluster_dir)
        if cluster is None:
            raise RuntimeError(f"no cluster state in {self.cluster_dir}")
        node = next(n for n in cluster.nodes if n.node_id == node_id)
        pid = node.pid
        if pid is None or not local.pid_alive(pid):
            raise RuntimeError(f"broker {node_id} (pid {pid}) is not running")
        return pid

    def group_members(self) -> dict[str, set[int]]:
        """Member id -> input partitions assigned, as the group coordinator describes the group."""
        description = self._admin.describe_consumer_groups([self.group], request_timeout=10)[self.group].result(10)
        return {
            m.member_id: {tp.partition for tp in m.assignment.topic_partitions if tp.topic == self.input_topic}
            for m in description.members
        }

    def group_coordinator(self) -> int:
        """Id of the broker coordinating the consumer group (retried)."""
        description = retry_kafka(
            lambda: self._admin.describe_consumer_groups([self.group], request_timeout=10)[self.group].result(10),
            timeout=60,
            what="describing the consumer group",
        )
        return description.coordinator.id

    def final_lag(self) -> int | None:
        """Input events the group has not committed, once it has had FINAL_COMMIT_S to commit."""
        deadline = time.monotonic() + FINAL_COMMIT_S
        lag = None
        while time.monotonic() < deadline:
            with suppress(Exception):
                parts = group_lag(self.bootstrap, self.group, [self.input_topic], admin=self._admin)
                lag = sum(p.log_end if p.lag is None else p.lag for p in parts)
                if lag == 0:
                    break
            time.sleep(0.5)
        return lag

    def delete_topics(self) -> None:
        """The trial's topics, as far as the cluster lets it (best effort)."""
        with suppress(Exception):
            mine = [t for t in self._admin.list_topics(timeout=10).topics if t.startswith(self.prefix)]
            if mine:
                for future in self._admin.delete_topics(mine, operation_timeout=30).values():
                    future.result(30)


class Trial:
    """The state of one trial; scenarios drive it through the methods below and its `kafka`."""

    config_path: Path  # set by setup()
    pipeline: PipelineConfig  # the trial config's engines pipeline, set by setup()
    pool: WorkerPool  # set by setup()
    session_timeout_s: float  # the group's: how long a killed worker keeps its partitions; set by setup()

    def __init__(self, scenario: str, guarantee: str | None, seed: int, settings: TrialSettings) -> None:
        self.settings = settings
        self.rng = random.Random(seed)
        self.prefix = f"faults-{scenario.replace('_', '-')}-{seed}-{uuid.uuid4().hex[:6]}"
        self.dir = settings.work_dir / "trials" / self.prefix
        self.result = TrialResult(scenario, guarantee, seed)
        self.kafka = TrialKafka(settings.bootstrap, self.prefix, settings.cluster_dir)
        self.feeder: Feeder | None = None
        self.watcher: PredictionWatcher | None = None
        self._probes: list[tuple[str, float, set[int]]] = []

    # --- set-up ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Config, topics (see TrialKafka.create_topics) and the worker pool."""
        settings = self.settings
        self.dir.mkdir(parents=True, exist_ok=True)
        path, notes = write_config(
            self.dir / "config.toml", self.prefix, guarantee=self.result.guarantee, replication=settings.replication
        )
        self.result.notes += notes
        self.config_path = path
        config = load_config(path)
        self.pipeline = config.pipelines[0]
        self.session_timeout_s = config.kafka.session_timeout_ms / 1000
        self.pool = WorkerPool(
            path,
            settings.bootstrap,
            self.dir,
            self.prefix if settings.stable_ids else None,
            on_event=self.mark,
            stop_timeout=STOP_TIMEOUT_S,
        )
        self.kafka.create_topics(self.pipeline, settings.replication)
        topics = self.pipeline.topics
        self.watcher = PredictionWatcher(
            settings.bootstrap, topics.predictions, self.pipeline.outputs.score_name, alerts_topic=topics.alerts
        )

    # --- the faults: workers (see stream_infer.tools.faults.workers) and brokers --------------------

    def start_workers(self, *names: str) -> None:
        """Start workers and wait until each is ready; the name is the instance id's suffix."""
        self.pool.start(*names)

    def stop_worker(self, name: str, *, graceful_required: bool = False) -> WorkerExit:
        return self.pool.stop(name, graceful_required=graceful_required)

    def kill_worker(self, name: str) -> float:
        """SIGKILL (no restart); returns the wall-clock moment of the kill."""
        at = self.mark(f"SIGKILL worker {name}")
        self.pool.kill(name)
        return at

    def kill_broker(self, node_id: int) -> float:
        """SIGKILL the broker process of `node_id` (PID from the cluster's state); returns the moment."""
        pid = self.kafka.broker_pid(node_id)
        at = self.mark(f"SIGKILL broker {node_id}", pid=pid)
        os.kill(pid, signal.SIGKILL)
        with suppress(ChildProcessError, OSError):  # started by this process: reap it
            os.waitpid(pid, 0)
        return at

    # --- the stream and the clock ---------------------------------------------------------------

    def start_stream(self) -> None:
        if self.watcher is None:
            raise RuntimeError("setup() must run before start_stream()")
        self.watcher.start()
        settings = self.settings
        self.feeder = Feeder(
            settings.bootstrap, self.pipeline.input_topic, settings.stream, rate=settings.rate, duration=settings.duration
        )
        self.feeder.start()

    def elapsed(self) -> float:
        if self.feeder is None or self.feeder.started_at is None:
            raise RuntimeError("the stream has not started")
        return time.time() - self.feeder.started_at

    def wait_until(self, seconds: float) -> None:
        """Sleep until `seconds` after the stream started (at once if that has passed)."""
        if (left := seconds - self.elapsed()) > 0:
            time.sleep(left)

    def mark(self, what: str, **details) -> float:
        """Record an action in the trial's timeline; returns its wall-clock moment."""
        at = time.time()
        origin = self.feeder.started_at if self.feeder is not None and self.feeder.started_at else at
        # Called from the scenario and from the pool's supervisor thread: list.append is atomic.
        self.result.faults.append({"what": what, "at_s": round(at - origin, 2), **details})
        log.info("%s at %.1f s", what, at - origin, extra={"trial": self.prefix})
        return at

    def probe(self, label: str, fault_at: float, partitions: set[int]) -> None:
        """Measure, once the trial ends, each partition's recovery after this fault."""
        self._probes.append((label, fault_at, set(partitions)))

    def wait_group(self, members: int, timeout: float) -> dict[str, set[int]]:
        """The group's members once there are `members` of them and all partitions are assigned
        (or whatever it is after `timeout`, with a note)."""
        deadline = time.monotonic() + timeout
        current: dict[str, set[int]] = {}
        while time.monotonic() < deadline:
            with suppress(Exception):  # a coordinator moving answers with an error for a moment
                current = self.kafka.group_members()
                assigned = set().union(*current.values()) if current else set()
                if len(current) == members and len(assigned) == PARTITIONS:
                    return current
            time.sleep(0.25)
        self.result.notes.append(f"group did not settle at {members} member(s) within {timeout:.0f} s: {current}")
        return current

    # --- the end --------------------------------------------------------------------------------

    def finish(self) -> None:
        """Wait for the stream and the drain, stop the workers and account (fills `result`)."""
        feeder, watcher = self.feeder, self.watcher
        if feeder is None or watcher is None:
            raise RuntimeError("finish() needs a started stream (setup() and start_stream())")
        if not feeder.join(self.settings.duration + DELIVERY_TIMEOUT_MS / 1000 + 60):
            raise RuntimeError("the feeder did not finish")
        if feeder.error is not None:
            raise RuntimeError(f"the feeder failed: {feeder.error}")
        self.result.feed_errors = feeder.failed
        if feeder.failed:
            self.result.notes.append(f"{feeder.failed} input(s) not acknowledged to the feeder: {feeder.last_error}")
        inputs = {source: self.settings.stream.identity(index) for source, index in feeder.delivered.items()}
        watcher.wait_drained(set(inputs), timeout=DRAIN_TIMEOUT_S, settle=SETTLE_S)
        self.result.final_lag = self.kafka.final_lag()
        with suppress(Exception):
            self.result.final_assignment = sorted(sorted(p) for p in self.kafka.group_members().values())
        self.pool.stop_supervising()
        for name in self.pool.names():
            self.stop_worker(name)
        self.result.exits, self.result.restarts = self.pool.exits, self.pool.restarts
        watcher.stop()
        self._account(inputs, watcher, feeder)

    def _account(self, inputs: dict[Source, UnitCycle], watcher: PredictionWatcher, feeder: Feeder) -> None:
        """Fill `result` from what the watcher saw of the fed `inputs`: the accounting against the
        reference, the longest latency, and the recovery after each probed fault."""
        reference = self.settings.reference
        observations = watcher.snapshot()
        self.result.accounting = account(
            inputs, observations, reference.predictions, alerts=watcher.alerts_snapshot(), reference_alerts=reference.alerts
        )
        self.result.latency_max_s = latency_max(observations)
        seen = predictions_seen(observations)
        for label, fault_at, partitions in self._probes:
            self.result.recovery[label] = recovery_seconds(fault_at, partitions, seen)
            self.result.feed_recovery[label] = recovery_seconds(fault_at, partitions, feeder.acknowledged)

    def close(self, *, delete_topics: bool = False) -> None:
        """Whatever happened: no worker or thread of this trial outlives it."""
        if self.feeder is not None:
            self.feeder.stop()
            self.feeder.join(30)
        if hasattr(self, "pool"):
            self.pool.kill_all()
            self.result.exits, self.result.restarts = self.pool.exits, self.pool.restarts
        if self.watcher is not None:
            self.watcher.stop()
        if delete_topics:
            self.kafka.delete_topics()


Scenario = Callable[[Trial], None]


def run_trial(scenario: str, play: Scenario, guarantee: str | None, seed: int, **trial_args) -> TrialResult:
    """Set up, play the scenario, finish and account; any failure ends the trial with `error` set.
    `trial_args` are TrialSettings' fields, and `delete_topics` (default False): delete the trial's
    topics afterwards (on a cluster the run did not start)."""
    started = time.monotonic()
    delete_topics = trial_args.pop("delete_topics", False)
    trial = Trial(scenario, guarantee, seed, TrialSettings(**trial_args))
    try:
        trial.setup()
        play(trial)
        trial.finish()
    except Exception as err:
        log.exception("trial %s failed", trial.prefix)
        trial.result.error = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
    finally:
        trial.close(delete_topics=delete_topics)
    trial.result.duration_s = round(time.monotonic() - started, 1)
    trial.result.notes.append(f"logs, config and result.json in {trial.dir}")
    with suppress(OSError):  # the trial's record next to its logs, for a look afterwards
        (trial.dir / "result.json").write_text(json.dumps(trial.result.to_json(), indent=1))
    return trial.result
