"""A fuzz run: hostile and valid events through one real worker on a real Kafka, and its accounting.

The run writes the demo config (its pipelines the kinds know: `engines`, `machines` and
`transactions`, see :data:`PIPELINES`) on topics and a group of its own, creates the input and
output topics, starts one worker process, and produces, on every pipeline, valid events of the
data sets mixed at random with hostile records of every kind (:mod:`.kinds`), each kind as often
as the others. Each poison pill (the 1 MB value, the 600 KB key) is followed at once by
a valid *canary* event on the same partition. Then it reads the prediction and dead-letter topics
until every record has its output (or the drain timeout passes), waits a moment for late
duplicates, reads the worker's peak RSS (VmHWM), checks it is still running and stops it.

What it checks (each a violation, with examples, when broken):

* every valid event has exactly one prediction (by source partition and offset) and no dead letter;
* no hostile record has a prediction; every one has a dead letter with its kind's reason, whose
  headers, key and value follow the dead-letter contract (:mod:`.accounting`);
* the worker was running at the end and stopped with status 0;
* every canary was predicted (the seconds from its append to the log to its prediction are reported).

Burst mode (`poison_burst` > 0) then produces that many 1 MB poison values, lz4-compressed on the
wire, as a backlog to fresh topics, starts a fresh worker and reports its peak RSS while it
dead-letters them all.

Keys mode (`keys` > 0) then runs the worker twice more on fresh topics, each time feeding `keys`
distinct engine ids (one valid event each, key matching) into `engines`: without a bound on the
per-key state, and with `pipelines[].state.max_keys`; it reports the worker's peak RSS both ways.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from stream_infer import configs
from stream_infer.config import Config, PipelineConfig, load_config
from stream_infer.configs import demo_config_data, keep_pipelines, pipeline_table, rename_under
from stream_infer.kafka.admin import admin_client, create_topics
from stream_infer.records import InputRecord
from stream_infer.tools.devkafka import local
from stream_infer.tools.fuzz.accounting import Expectation, dead_letter_problems, expect_dead_letter
from stream_infer.tools.fuzz.kinds import (
    DATASETS,
    PIPELINES,
    POISON_VALUE_BYTES,
    Base,
    Headers,
    Kind,
    all_kinds,
    build,
    first_base,
    kinds_for,
)
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.replay import dataset_events, dataset_size
from stream_infer.tools.workerproc import WorkerProcess

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

# The feeder's own limit: above the 1,030,000-byte poison pill plus its key and framing, below
# the broker's default message.max.bytes (1,048,588) that bounds a record batch.
FEEDER_MESSAGE_MAX_BYTES = 1_048_000
# Loop n of a data set renames its entities so they are new ones (windows start empty).
ENGINE_STRIDE = 1000
# After every record has its output: how long to keep reading for late duplicates.
SETTLE_S = 2.0
EXAMPLES = 10  # violations printed per check
# A header "name=value" for kcat -H whose name is not UTF-8.
HEADER_NAME_PROBE = b"\xfe\xff-trace=1"


@dataclass
class FuzzSettings:
    """How big a run is (see `stream-infer fuzz --help`)."""

    hostile: int = 2000  # hostile records, all pipelines together (each kind as often as the others)
    valid: int | None = None  # valid events mixed in, all pipelines together; None: as many as hostile
    partitions: int = 3  # of every topic of the run
    # Records/s produced, all pipelines together (0: as fast as possible). The default is one a
    # 2-core machine sustains with the broker and the feeder on it, so canary times measure the
    # worker rather than a backlog.
    rate: float = 1000.0
    seed: int = 0  # of the order of the feed
    drain_timeout_s: float = 120.0  # after the last record is produced, for every output to arrive
    keys: int = 0  # keys mode (see the module docstring): distinct engine ids fed; 0: skip
    max_keys: int = 10_000  # keys mode: the bounded worker's pipelines[].state.max_keys
    work_dir: Path = Path(".stream-infer/fuzz")  # the run's configs and worker logs
    # Also produce, first on each pipeline, a valid event whose header name is not UTF-8 (with
    # kcat: the Python client cannot write one); it must get an output, and so must the events
    # fetched with it.
    header_names: bool = False
    # Burst mode: this many 1 MB poison values, lz4-compressed on the wire, as a backlog that a
    # fresh worker drains; its peak RSS is reported. 0: skip.
    poison_burst: int = 0

    @property
    def valid_count(self) -> int:
        return self.hostile if self.valid is None else self.valid


@dataclass
class KeysResult:
    """One keys-mode worker: distinct engine ids fed, predictions seen, peak RSS."""

    max_keys: int  # 0: unbounded
    keys: int
    predicted: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    exited: bool = False  # the worker exited before the end
    stop_status: int | None = None
    state_keys: float | None = None  # the worker's stream_infer_state_keys{pipeline="engines"} at the end
    evictions: float | None = None  # its stream_infer_state_evictions_total{pipeline="engines",reason="max_keys"}
    batch_slack: int = 0  # keys the state may hold beyond max_keys: those of the batches in hand
    error: str | None = None


@dataclass
class BurstResult:
    """Burst mode: a backlog of 1 MB poison values drained by a fresh worker."""

    records: int
    dead_letters: int = 0
    predicted: int = 0
    seconds: float = 0.0  # from the worker's start to the last dead letter
    peak_rss_mb: float = 0.0
    exited: bool = False
    stop_status: int | None = None
    error: str | None = None


@dataclass
class FuzzResult:
    hostile: int = 0
    valid: int = 0
    kinds: int = 0  # distinct kinds produced (their names; most apply to every pipeline)
    lost: int = 0  # valid without prediction, hostile without dead letter
    hostile_predicted: int = 0
    wrong_reason: int = 0
    dlq_problems: int = 0  # dead letters with the right reason but broken headers, key or value
    valid_dead: int = 0  # valid events dead-lettered
    duplicates: int = 0  # outputs beyond the first per input
    exits: int = 0  # the worker exited before the end of the run
    stop_status: int | None = None
    canaries: int = 0
    canary_max_s: float | None = None
    latency_max_s: float | None = None  # of every valid event, canaries included: the backlog's share
    peak_rss_mb: float = 0.0
    worker_cpu_s: float = 0.0  # the worker's CPU time over the whole phase, start-up included
    seconds: float = 0.0
    not_sent: int = 0  # records the broker did not acknowledge to the feeder (not counted as lost)
    probes: int = 0  # events with a header name that is not UTF-8 (header_names)
    by_reason: Counter = field(default_factory=Counter)  # dead letters per reason
    keys: list[KeysResult] = field(default_factory=list)
    burst: BurstResult | None = None
    violations: dict[str, list[str]] = field(default_factory=dict)  # check -> examples
    error: str | None = None

    def violation(self, check: str, example: str) -> None:
        examples = self.violations.setdefault(check, [])
        if len(examples) < EXAMPLES:
            examples.append(example)

    @property
    def failed(self) -> bool:
        return bool(self.error or self.violations or self.not_sent)

    def line(self) -> str:
        """The one-line summary."""
        canary = "none" if self.canary_max_s is None else f"{self.canary_max_s:.2f}"
        latency = "none" if self.latency_max_s is None else f"{self.latency_max_s:.2f}"
        status = "none" if self.stop_status is None else str(self.stop_status)
        parts = [
            f"fuzz: hostile={self.hostile} valid={self.valid} kinds={self.kinds} lost={self.lost} "
            f"hostile_predicted={self.hostile_predicted} wrong_reason={self.wrong_reason} exits={self.exits} "
            f"canary_max_s={canary} peak_rss_mb={self.peak_rss_mb:.0f}",
            f"duplicates={self.duplicates} dlq_problems={self.dlq_problems} valid_dead={self.valid_dead} "
            f"stop_status={status} canaries={self.canaries} latency_max_s={latency} worker_cpu_s={self.worker_cpu_s:.1f} "
            f"seconds={self.seconds:.0f}",
        ]
        if self.not_sent:
            parts.append(f"not_sent={self.not_sent}")
        if self.probes:
            parts.append(f"header_name_probes={self.probes}")
        if self.burst:
            parts.append(f"poison_burst={self.burst.records} peak_rss_mb_burst={self.burst.peak_rss_mb:.0f}")
        if self.keys:
            by_bound = {("max_keys" if k.max_keys else "unbounded"): k for k in self.keys}
            parts.append(f"keys={self.keys[0].keys}")
            parts += [f"peak_rss_mb_{name}={k.peak_rss_mb:.0f}" for name, k in by_bound.items()]
            if bounded := by_bound.get("max_keys"):
                parts.append(f"max_keys={bounded.max_keys}")
        parts.append("result=" + ("FAIL" if self.failed else "ok"))
        return " ".join(parts)

    def report(self) -> list[str]:
        """Lines after the summary: dead letters per reason, keys-mode detail, violations."""
        lines = ["dead letters by reason: " + ", ".join(f"{r}={n}" for r, n in sorted(self.by_reason.items()))]
        if b := self.burst:
            lines.append(
                f"burst mode: {b.records} poison values of {POISON_VALUE_BYTES:,} bytes (lz4 on the wire), "
                f"{b.dead_letters} dead letters, {b.predicted} predictions in {b.seconds:.0f} s, peak RSS "
                f"{b.peak_rss_mb:.0f} MB, stop status {b.stop_status}" + (f", error: {b.error}" if b.error else "")
            )
        for k in self.keys:
            bound = f"max_keys={k.max_keys}" if k.max_keys else "unbounded"
            held = "?" if k.state_keys is None else f"{k.state_keys:.0f}"
            evicted = "?" if k.evictions is None else f"{k.evictions:.0f}"
            lines.append(
                f"keys mode ({bound}): {k.keys} engine ids, {k.predicted} predicted, {k.dead_letters} dead letters "
                f"in {k.seconds:.0f} s, peak RSS {k.peak_rss_mb:.0f} MB, keys held at the end {held}, "
                f"evicted {evicted}, stop status {k.stop_status}" + (f", error: {k.error}" if k.error else "")
            )
        if self.error:
            lines.append(f"error: {self.error}")
        for check, examples in self.violations.items():
            lines.append(f"violation {check}:")
            lines += [f"  {e}" for e in examples]
        return lines


# --- config and topics ------------------------------------------------------------------------


# Order per key is checked on the engines pipeline (`sequence_field`, off in the demo config):
# the run's replayed and backwards-cycle kinds expect out_of_order.
SEQUENCE_FIELDS = {"engines": "cycle"}


def write_config(path: Path, prefix: str, *, engines_state: dict[str, int] | None = None) -> Config:
    """The demo config's pipelines the kinds know (PIPELINES) with every topic and the group under `prefix`, paths
    made absolute, and SEQUENCE_FIELDS set; with `engines_state` (e.g. {"max_keys": 0}) that
    table replaces the engines pipeline's [pipelines.state] (whatever the demo sets there).
    Raises ConfigError if the worker's config does not accept the result."""
    data = rename_under(keep_pipelines(demo_config_data(), *PIPELINES), prefix)
    for name, sequence_field in SEQUENCE_FIELDS.items():
        pipeline_table(data, name)["sequence_field"] = sequence_field
    if engines_state is not None:
        pipeline_table(data, "engines")["state"] = dict(engines_state)
    return load_config(configs.write_config(data, path))


def _output_topics(p: PipelineConfig) -> list[str]:
    return [t for t in (p.topics.predictions, p.topics.alerts, p.topics.dead_letters, p.topics.review) if t]


def _create_topics(bootstrap: str, config: Config, partitions: int, timeout: float = 20.0) -> None:
    """Inputs and outputs, all with `partitions`, and wait until metadata lists them all.

    The inputs stamp records with the broker's append time (LogAppendTime), which the feeder's
    delivery reports carry: latencies then count from when a record became consumable, not from
    when the feeder queued it (a 1 MB poison pill ahead of it in the feeder's queue is no
    property of the worker)."""
    inputs = [p.input_topic for p in config.pipelines]
    outputs = [t for p in config.pipelines for t in _output_topics(p)]
    create_topics(bootstrap, inputs, partitions=partitions, config={"message.timestamp.type": "LogAppendTime"})
    create_topics(bootstrap, outputs, partitions=partitions)
    names = inputs + outputs
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=10).topics
        if all(n in topics and len(topics[n].partitions) == partitions for n in names):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {names} not in the cluster's metadata {timeout:.0f} s after creation")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far; 0 if it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MB; 0 if it cannot be read (not Linux, gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- the event streams ------------------------------------------------------------------------


def valid_events(pipeline: str) -> Iterator[tuple[bytes, bytes]]:
    """The pipeline's data set as (key, value), looped without end; loop n > 0 renames every
    entity so its windows and histories start empty (engines: unit + n * 1000; machines: product
    id suffixed with n as four digits, udi + n * the data set's size; transactions: card id and
    tx id suffixed `.n`, so cards are new and tx ids unique)."""
    if pipeline not in DATASETS:
        raise ValueError(f"unknown pipeline {pipeline!r}; the fuzz run knows {', '.join(DATASETS)}")
    dataset = DATASETS[pipeline]
    for loop in itertools.count():
        for key, value in dataset_events(dataset):
            if loop == 0:
                yield key, value
                continue
            event = orjson.loads(value)
            if pipeline == "engines":
                event["unit"] += loop * ENGINE_STRIDE
                key = str(event["unit"]).encode()
            elif pipeline == "machines":
                event["product_id"] = f"{event['product_id']}{loop:04d}"
                event["udi"] += loop * dataset_size(dataset)
                key = event["product_id"].encode()
            else:  # transactions
                event["card_id"] = f"{event['card_id']}.{loop}"
                event["tx_id"] = f"{event['tx_id']}.{loop}"
                key = event["card_id"].encode()
            yield key, orjson.dumps(event)


class _Peekable:
    """An endless iterator whose next item can be looked at without taking it (a canary's
    partition is decided before the poison that precedes it is produced)."""

    def __init__(self, it: Iterator[tuple[bytes, bytes]]) -> None:
        self._it, self._next = it, next(it)

    def peek(self) -> tuple[bytes, bytes]:
        return self._next

    def take(self) -> tuple[bytes, bytes]:
        item, self._next = self._next, next(self._it)
        return item


# --- the feed ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Sent:
    """One produced record, as the accounting needs it."""

    pipeline: str
    expected: Expectation | None  # None: a valid event
    canary_of: str | None = None  # the poison kind this valid event follows
    probe: bool = False  # a valid event with a header name that is not UTF-8: any output will do
    partition: int = -1
    offset: int = -1
    timestamp_ms: int = 0
    error: str | None = None


@dataclass(slots=True)
class _Entry:
    pipeline: str
    kind: Kind | None  # None: a valid event


def _plan(settings: FuzzSettings, rng: random.Random) -> list[_Entry]:
    """The order of the feed: per pipeline, an equal share of the hostile records (every kind in
    turn, a shuffled round at a time) and of the valid ones (see :func:`share`), mixed at random;
    the pipelines mixed at random too. Canaries are added while producing, after each poison."""
    per_pipeline = []
    for pipeline in PIPELINES:
        hostile = share(settings.hostile, pipeline)
        valid = share(settings.valid_count, pipeline)
        kinds = kinds_for(pipeline)
        chosen: list[Kind] = []
        while len(chosen) < hostile:
            round_ = list(kinds)
            rng.shuffle(round_)
            chosen += round_[: hostile - len(chosen)]
        entries = [_Entry(pipeline, k) for k in chosen] + [_Entry(pipeline, None)] * valid
        rng.shuffle(entries)
        per_pipeline.append(entries)
    merged = [e for entries in per_pipeline for e in entries]
    rng.shuffle(merged)
    return merged


def share(total: int, pipeline: str) -> int:
    """A pipeline's share of `total` records split over :data:`PIPELINES`: an equal part, the
    first `total % len(PIPELINES)` pipelines one more."""
    whole, rest = divmod(total, len(PIPELINES))
    return whole + (1 if PIPELINES.index(pipeline) < rest else 0)


class _Feeder:
    """Produces the plan: valid events in data-set order, hostile records built from the last
    valid event of their pipeline (sent before on the same partition when the hostile record
    keeps its key, so the worker accepted it first), a canary after each poison on the poison's
    partition."""

    def __init__(self, bootstrap: str, config: Config, partitions: int) -> None:
        self.pipelines = {p.name: p for p in config.pipelines}
        self.partitions = partitions
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.max.bytes": FEEDER_MESSAGE_MAX_BYTES,
                "compression.type": "none",
                "logger": _client_log,
            }
        )
        self.streams = {name: _Peekable(valid_events(name)) for name in self.pipelines}
        self.last: dict[str, tuple[bytes, bytes]] = {name: s.peek() for name, s in self.streams.items()}
        self.previous_key: dict[str, bytes] = {}
        # Two distinct keys of each data set: the "other entity" before the stream has one.
        self.fallback_keys = {name: _two_keys(name) for name in self.pipelines}
        self.sent: list[Sent] = []
        self._round_robin = itertools.count()

    def partition_of(self, key: bytes | None) -> int:
        """Our own partitioner, so a canary's partition is known before it is produced."""
        if not key:
            return next(self._round_robin) % self.partitions
        return zlib.crc32(key) % self.partitions

    def _other_key(self, name: str, key: bytes) -> bytes:
        other = self.previous_key.get(name)
        if other is None or other == key:
            first, second = self.fallback_keys[name]
            return first if first != key else second
        return other

    def _produce(self, sent: Sent, topic: str, key: bytes | None, value: bytes | None, partition: int, headers: Headers) -> None:
        self.sent.append(sent)
        while True:
            try:
                self.producer.produce(
                    topic, value, key, partition=partition, headers=list(headers) or None, on_delivery=partial(_delivered, sent)
                )
                return
            except BufferError:
                self.producer.poll(0.05)
            except KafkaException as err:  # refused by the client itself (too large for the feeder)
                sent.error = err.args[0].str()
                return

    def valid(self, name: str, canary_of: str | None = None, partition: int | None = None) -> None:
        key, value = self.streams[name].take()
        self.previous_key[name] = self.last[name][0]
        self.last[name] = (key, value)
        config = self.pipelines[name]
        self._produce(
            Sent(name, None, canary_of),
            config.input_topic,
            key,
            value,
            self.partition_of(key) if partition is None else partition,
            (),
        )

    def hostile(self, name: str, kind: Kind) -> None:
        config = self.pipelines[name]
        if name not in self.previous_key:
            self.valid(name)  # the base must be an event the worker has (been sent and) accepted
        key, value = self.last[name]
        base = Base(name, key, value, self._other_key(name, key), config.max_message_bytes, config.max_key_bytes)
        record = build(kind, base)
        expected = expect_dead_letter(
            kind.name, kind.reasons[name], record, max_message_bytes=config.max_message_bytes, max_key_bytes=config.max_key_bytes
        )
        if kind.poison:
            # The canary is the next valid event; the poison goes to its partition, just before it.
            partition = self.partition_of(self.streams[name].peek()[0])
            self._produce(Sent(name, expected), config.input_topic, record.key, record.value, partition, record.headers)
            self.valid(name, canary_of=kind.name, partition=partition)
        else:
            self._produce(
                Sent(name, expected), config.input_topic, record.key, record.value, self.partition_of(record.key), record.headers
            )

    def header_name_probe(self, name: str, bootstrap: str) -> None:
        """The next valid event, with a header whose name is not UTF-8, through kcat; its offset
        is the partition's high watermark afterwards (nothing else is producing then)."""
        kcat = shutil.which("kcat")
        if kcat is None:
            raise RuntimeError("header_names needs kcat (Debian package kcat) on PATH")
        if self.producer.flush(30):
            raise RuntimeError("the feeder could not flush before the header-name probe")
        key, value = self.streams[name].take()  # not a base for hostile records: it may get no output
        topic, partition = self.pipelines[name].input_topic, self.partition_of(key)
        subprocess.run(
            [kcat, "-b", bootstrap, "-P", "-t", topic, "-p", str(partition), "-k", key, "-H", HEADER_NAME_PROBE],
            input=value,
            check=True,
            timeout=30,
            capture_output=True,
        )
        watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": "stream-infer-fuzz-watch", "logger": _client_log})
        try:
            offset = watcher.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1] - 1
        finally:
            watcher.close()
        self.sent.append(Sent(name, None, probe=True, partition=partition, offset=offset, timestamp_ms=int(time.time() * 1000)))

    def run(self, plan: list[_Entry], rate: float) -> None:
        started = time.monotonic()
        for i, entry in enumerate(plan):
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if entry.kind is None:
                self.valid(entry.pipeline)
            else:
                self.hostile(entry.pipeline, entry.kind)
            self.producer.poll(0)
        remaining = self.producer.flush(60)
        if remaining:
            raise RuntimeError(f"{remaining} record(s) not acknowledged by the broker within 60 s")


def _two_keys(pipeline: str) -> tuple[bytes, bytes]:
    events = dataset_events(DATASETS[pipeline])
    first = next(events)[0]
    return first, next(k for k, _ in events if k != first)


def _delivered(sent: Sent, err, msg) -> None:
    if err is not None:
        sent.error = err.str()
        return
    sent.partition, sent.offset, sent.timestamp_ms = msg.partition(), msg.offset(), msg.timestamp()[1]


# --- reading the outputs ----------------------------------------------------------------------


class _Outputs:
    """Predictions and dead letters per input (pipeline, partition, offset)."""

    def __init__(self, config: Config, sent: list[Sent], result: FuzzResult) -> None:
        self.result = result
        self.by_topic: dict[str, tuple[str, str]] = {}
        self.input_topic = {p.name: p.input_topic for p in config.pipelines}
        for p in config.pipelines:
            self.by_topic[p.topics.predictions] = (p.name, "prediction")
            self.by_topic[p.topics.dead_letters] = (p.name, "dead_letter")
        self.inputs: dict[tuple[str, int, int], Sent] = {(s.pipeline, s.partition, s.offset): s for s in sent if s.offset >= 0}
        self.predictions: Counter = Counter()
        self.prediction_ms: dict[tuple[str, int, int], int] = {}
        self.dead: dict[tuple[str, int, int], list[str]] = {}
        self.waiting = set(self.inputs)

    def on_record(self, record: InputRecord) -> None:
        pipeline, what = self.by_topic[record.topic]
        if what == "prediction":
            source = record.json()["source"]
            ident = (pipeline, source["partition"], source["offset"])
            self.predictions[ident] += 1
            self.prediction_ms.setdefault(ident, record.timestamp_ms)
        else:
            headers = record.headers or ()
            found = dict(headers)
            try:
                ident = (pipeline, int(record.header("x-source-partition") or b""), int(record.header("x-source-offset") or b""))
            except (KeyError, ValueError):
                self.result.violation("dlq_without_source", f"{record.topic}[{record.partition}]@{record.offset}: {found}")
                return
            reason = (found.get("x-dlq-reason") or b"?").decode(errors="replace")
            self.dead.setdefault(ident, []).append(reason)
            sent = self.inputs.get(ident)
            if sent is not None and sent.expected is not None:
                problems = dead_letter_problems(
                    sent.expected, record.key, record.value, headers, (self.input_topic[pipeline], ident[1], ident[2])
                )
                if problems and reason == sent.expected.reason:
                    self.result.dlq_problems += 1
                    self.result.violation(
                        "dlq_problems", f"{sent.expected.kind} on {pipeline} p{ident[1]}@{ident[2]}: {'; '.join(problems)}"
                    )
        self.waiting.discard(ident)


# --- the run ----------------------------------------------------------------------------------


def run_fuzz(settings: FuzzSettings, *, bootstrap: str | None = None, echo: Callable[[str], None] = print) -> FuzzResult:
    """The fuzz run (and keys mode when settings.keys > 0) on `bootstrap`, or on a local
    single-node cluster started in a temporary directory and stopped afterwards. Never raises
    for what the worker does: violations and errors are in the result."""
    result = FuzzResult()
    tmp = Path(tempfile.mkdtemp(prefix="stream-infer-fuzz-"))
    cluster_dir = tmp / "kafka"
    started = time.monotonic()
    try:
        if bootstrap is None:
            echo("fuzz: starting a local Kafka")
            bootstrap = local.up(cluster_dir, port=0, nodes=1)[0].bootstrap
        _hostile_phase(settings, bootstrap, result, echo)
        if settings.poison_burst:
            echo(f"fuzz: burst mode, {settings.poison_burst:,} poison values of {POISON_VALUE_BYTES:,} bytes as a backlog")
            result.burst = burst_phase(settings, bootstrap)
            _check_burst(result.burst, result)
        if settings.keys:
            for max_keys in (0, settings.max_keys):
                bound = f"max_keys={max_keys}" if max_keys else "no max_keys"
                echo(f"fuzz: keys mode, {settings.keys:,} engine ids, {bound}")
                keys = keys_phase(settings, bootstrap, max_keys)
                result.keys.append(keys)
                _check_keys(keys, result)
    except Exception as err:  # the harness's own failure (broker, config): reported, not raised
        log.exception("fuzz run failed")
        result.error = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
    finally:
        local.down(cluster_dir, wipe=True, timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _hostile_phase(settings: FuzzSettings, bootstrap: str, result: FuzzResult, echo: Callable[[str], None]) -> None:
    rng = random.Random(settings.seed)
    prefix = f"fuzz-{settings.seed}-{uuid.uuid4().hex[:6]}"
    directory = settings.work_dir / prefix
    config = write_config(directory / "config.toml", prefix)
    _create_topics(bootstrap, config, settings.partitions)
    worker = WorkerProcess(directory / "config.toml", bootstrap, directory).start()
    reader: TopicReader | None = None
    try:
        worker.wait_ready()
        plan = _plan(settings, rng)
        pipelines = ", ".join(f"{name} ({len(kinds_for(name))} kinds)" for name in PIPELINES)
        echo(
            f"fuzz: {settings.hostile:,} hostile and {settings.valid_count:,} valid records on {pipelines}, "
            f"worker log {worker.log_path}"
        )
        feeder = _Feeder(bootstrap, config, settings.partitions)
        if settings.header_names:
            for name in PIPELINES:
                feeder.header_name_probe(name, bootstrap)
        feeder.run(plan, settings.rate)
        sent = feeder.sent
        result.hostile = sum(1 for s in sent if s.expected is not None)
        result.valid = len(sent) - result.hostile - sum(s.probe for s in sent)
        result.probes = sum(s.probe for s in sent)
        result.kinds = len({s.expected.kind for s in sent if s.expected is not None})
        for s in sent:
            if s.error is not None or s.offset < 0:
                result.not_sent += 1
                result.violation("not_sent", f"{s.pipeline} {s.expected.kind if s.expected else 'valid'}: {s.error}")
        outputs = _Outputs(config, sent, result)
        reader = TopicReader(
            bootstrap, [t for p in config.pipelines for t in (p.topics.predictions, p.topics.dead_letters)], keep=False
        )
        deadline = time.monotonic() + settings.drain_timeout_s
        while outputs.waiting and time.monotonic() < deadline and worker.process.poll() is None:
            reader.poll(0.5, outputs.on_record)
        settle = time.monotonic() + SETTLE_S
        while time.monotonic() < settle:
            reader.poll(0.2, outputs.on_record)
        running = worker.process.poll() is None
        result.peak_rss_mb = peak_rss_mb(worker.process.pid) if running else 0.0
        result.worker_cpu_s = cpu_seconds(worker.process.pid) if running else 0.0
    finally:
        if reader is not None:
            reader.close()
        status = worker.stop()
    if not running:
        result.exits += 1
        result.violation(
            "worker_exited", f"the worker exited with status {status} during the run; log tail:\n" + worker.log_tail(20)
        )
    else:
        result.stop_status = status
        if status != 0:
            result.violation("stop_status", f"the worker stopped with status {status}; log tail:\n" + worker.log_tail(20))
    _account(outputs, result)


def _account(outputs: _Outputs, result: FuzzResult) -> None:
    canary_s, latency_s = [], []
    for ident, sent in outputs.inputs.items():
        pipeline, partition, offset = ident
        where = f"{pipeline} p{partition}@{offset}"
        predicted = outputs.predictions.get(ident, 0)
        dead = outputs.dead.get(ident, [])
        for reason in dead:
            result.by_reason[reason] += 1
        if predicted + len(dead) > 1:
            result.duplicates += predicted + len(dead) - 1
            result.violation("duplicates", f"{where}: {predicted} prediction(s), dead letters {dead}")
        if sent.probe:
            if not predicted and not dead:
                result.lost += 1
                result.violation("lost", f"event with a header name that is not UTF-8 {where}: no output")
            continue
        if sent.expected is None:
            if dead:
                result.valid_dead += 1
                result.violation("valid_dead", f"valid event {where} dead-lettered: {dead}")
            elif not predicted:
                result.lost += 1
                result.violation("lost", f"valid event {where}" + (f" (canary after {sent.canary_of})" if sent.canary_of else ""))
            # From the input's append to the log (LogAppendTime) to the worker producing its
            # prediction (CreateTime): both record timestamps, on this machine's clock.
            seconds = (outputs.prediction_ms[ident] - sent.timestamp_ms) / 1000 if predicted else None
            if seconds is not None:
                latency_s.append(seconds)
            if sent.canary_of is not None:
                result.canaries += 1
                if seconds is not None:
                    canary_s.append(seconds)
            continue
        kind, reason = sent.expected.kind, sent.expected.reason
        if predicted:
            result.hostile_predicted += 1
            result.violation("hostile_predicted", f"{kind} {where} was predicted")
        if not dead:
            if not predicted:
                result.lost += 1
                result.violation("lost", f"hostile {kind} {where}: no dead letter")
        elif reason not in dead:
            result.wrong_reason += 1
            result.violation("wrong_reason", f"{kind} {where}: {dead}, expected {reason}")
    if canary_s:
        result.canary_max_s = max(canary_s)
    if latency_s:
        result.latency_max_s = max(latency_s)


# --- keys mode --------------------------------------------------------------------------------


def _engine_events(n: int) -> Iterator[tuple[bytes, bytes]]:
    """n valid engines events, one per engine id 1..n (cycle 1, the first event's readings)."""
    key, value = next(dataset_events(DATASETS["engines"]))
    head = b'{"schema_version":1,"unit":' + key + b","
    if not value.startswith(head):
        raise RuntimeError(f"unexpected layout of the first engines event: {value[:60]!r}")
    tail = value[len(head) - 1 :]
    for unit in range(1, n + 1):
        text = str(unit).encode()
        yield text, b'{"schema_version":1,"unit":' + text + tail


def _watermarks(consumer: Consumer, topic: str, partitions: int) -> int:
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions))


def burst_phase(settings: FuzzSettings, bootstrap: str) -> BurstResult:
    """`settings.poison_burst` 1 MB poison values (the poison_value_1mb kind), lz4-compressed on
    the wire (a padding of one letter compresses about 250:1), produced to `engines` on fresh
    topics before a worker starts; the worker drains them. Returns its peak RSS."""
    out = BurstResult(records=settings.poison_burst)
    prefix = f"fuzz-burst-{uuid.uuid4().hex[:6]}"
    directory = settings.work_dir / prefix
    config = write_config(directory / "config.toml", prefix)
    engines = next(p for p in config.pipelines if p.name == "engines")
    _create_topics(bootstrap, config, settings.partitions)
    kind = next(k for k in all_kinds() if k.name == "poison_value_1mb")
    record = build(kind, first_base("engines", max_message_bytes=engines.max_message_bytes, max_key_bytes=engines.max_key_bytes))
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
            "compression.type": "lz4",
            "message.max.bytes": FEEDER_MESSAGE_MAX_BYTES,
            "logger": _client_log,
        }
    )
    for i in range(settings.poison_burst):
        while True:
            try:
                producer.produce(engines.input_topic, record.value, record.key, partition=i % settings.partitions)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120):
        out.error = "the broker did not acknowledge every poison value within 120 s"
        return out
    with _phase_worker(out, directory, bootstrap, engines, settings.partitions) as phase:
        started = time.monotonic()
        phase.drain(settings.poison_burst, started, started + settings.drain_timeout_s, every=0.2)
    return out


def _check_burst(burst: BurstResult, result: FuzzResult) -> None:
    if burst.error:
        result.violation("burst_mode", burst.error)
    if burst.exited:
        result.exits += 1
        result.violation("worker_exited", "burst mode: the worker exited during the run")
    elif burst.stop_status != 0:
        result.violation("stop_status", f"burst mode: the worker stopped with status {burst.stop_status}")
    if burst.dead_letters != burst.records or burst.predicted:
        result.violation(
            "burst_mode", f"{burst.records} poison values, {burst.dead_letters} dead letters, {burst.predicted} predictions"
        )


def keys_phase(settings: FuzzSettings, bootstrap: str, max_keys: int) -> KeysResult:
    """One worker fed `settings.keys` distinct engine ids on fresh topics (with `max_keys` as
    the engines pipeline's state.max_keys when > 0); returns predictions seen and peak RSS."""
    out = KeysResult(max_keys=max_keys, keys=settings.keys)
    prefix = f"fuzz-keys-{'max' if max_keys else 'unbounded'}-{uuid.uuid4().hex[:6]}"
    directory = settings.work_dir / prefix
    config = write_config(directory / "config.toml", prefix, engines_state={"max_keys": max_keys})
    engines = next(p for p in config.pipelines if p.name == "engines")
    # Keys of the batches in hand are never evicted: a batch split in halves prepares both
    # before finishing either (see Pipeline._submit_overlapped), so up to two batches' keys.
    out.batch_slack = 2 * engines.batching.max_batch_size
    _create_topics(bootstrap, config, settings.partitions)
    failures: list[str] = []
    with _phase_worker(out, directory, bootstrap, engines, settings.partitions) as phase:
        started = time.monotonic()
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 50,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 200_000,
                "delivery.report.only.error": True,
                "logger": _client_log,
                "on_delivery": lambda err, msg: failures.append(err.str()) if err is not None else None,
            }
        )
        produce = producer.produce
        for key, value in _engine_events(settings.keys):
            while True:
                try:
                    produce(engines.input_topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        if producer.flush(120):
            raise RuntimeError("keys mode: the broker did not acknowledge every input within 120 s")
        if failures:
            raise RuntimeError(f"keys mode: {len(failures)} input(s) not delivered, first: {failures[0]}")
        phase.drain(settings.keys, started, time.monotonic() + settings.drain_timeout_s + settings.keys / 2000, every=0.5)
        if not out.exited:
            text = phase.worker.metrics_text()
            out.state_keys = _metric(text, 'stream_infer_state_keys{pipeline="engines"}')
            out.evictions = _metric(text, 'stream_infer_state_evictions_total{pipeline="engines",reason="max_keys"}')
    return out


def _metric(text: str, series: str) -> float | None:
    """The value of one series in Prometheus text exposition, None if absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _check_keys(keys: KeysResult, result: FuzzResult) -> None:
    bound = f"max_keys={keys.max_keys}" if keys.max_keys else "unbounded"
    if keys.error:
        result.violation("keys_mode", f"{bound}: {keys.error}")
    if keys.exited:
        result.exits += 1
        result.violation("worker_exited", f"keys mode {bound}: the worker exited during the run")
    elif keys.stop_status != 0:
        result.violation("stop_status", f"keys mode {bound}: the worker stopped with status {keys.stop_status}")
    if keys.max_keys and keys.state_keys is not None and keys.state_keys > keys.max_keys + keys.batch_slack:
        result.violation("state_over_max_keys", f"{bound}: the worker holds {keys.state_keys:.0f} keys at the end")
    if keys.predicted != keys.keys or keys.dead_letters:
        result.violation(
            "keys_mode", f"{bound}: {keys.keys} valid events, {keys.predicted} predictions, {keys.dead_letters} dead letters"
        )


@dataclass
class _PhaseWorker:
    """A burst or keys phase's worker, ready, and a consumer that reads the engines outputs'
    watermarks; `out` gets what the phase measures."""

    out: BurstResult | KeysResult
    worker: WorkerProcess
    watcher: Consumer
    engines: PipelineConfig
    partitions: int

    def drain(self, expected: int, started: float, deadline: float, *, every: float) -> None:
        """Wait until the engines pipeline has `expected` outputs (predictions and dead letters), the
        deadline passes or the worker exits; then fill in `out`'s counts, seconds since `started`,
        whether the worker exited, and its peak RSS."""
        out, process, topics = self.out, self.worker.process, self.engines.topics
        while time.monotonic() < deadline and process.poll() is None:
            out.predicted = _watermarks(self.watcher, topics.predictions, self.partitions)
            out.dead_letters = _watermarks(self.watcher, topics.dead_letters, self.partitions)
            if out.predicted + out.dead_letters >= expected:
                break
            time.sleep(every)
        out.seconds = time.monotonic() - started
        out.exited = process.poll() is not None
        out.peak_rss_mb = 0.0 if out.exited else peak_rss_mb(process.pid)


@contextmanager
def _phase_worker(
    out: BurstResult | KeysResult, directory: Path, bootstrap: str, engines: PipelineConfig, partitions: int
) -> Iterator[_PhaseWorker]:
    """Start a worker on the phase's config (`directory`/config.toml) and its watcher (a group named
    after the folder); the block runs once the worker is ready. An exception in it ends the phase with its first line in
    `out.error` (not raised); either way the watcher is closed and the worker stopped (see
    :func:`_stopped`)."""
    worker = WorkerProcess(directory / "config.toml", bootstrap, directory).start()
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{directory.name}-watch", "logger": _client_log})
    try:
        worker.wait_ready()
        yield _PhaseWorker(out, worker, watcher, engines, partitions)
    except Exception as err:
        out.error = _first_line(err)
    finally:
        watcher.close()
        _stopped(out, worker)


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0][:300] if str(err) else type(err).__name__


def _stopped(out: BurstResult | KeysResult, worker: WorkerProcess) -> None:
    """Stop the phase's worker; its status goes to `out`, with the log's tail in `out.error`
    when it exited on its own or stopped badly."""
    out.stop_status = worker.stop()
    if out.exited or out.stop_status != 0:
        out.error = (out.error or "") + f" worker log tail:\n{worker.log_tail(15)}"
