"""The worker's configuration file (TOML), validated on load.

Contract: :func:`load_config` returns a fully validated :class:`Config` or raises
:class:`ConfigError` whose message names the offending key (``pipelines[0].batching.max_wait_ms``)
and the problem. Relative file paths (model, schema) are resolved against the config file's folder,
so a config works from any working directory. ``KAFKA_BOOTSTRAP_SERVERS`` overrides
``kafka.bootstrap_servers``; the connection's security settings are described in
:mod:`stream_infer.kafka.connection`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Literal

import fastjsonschema
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stream_infer.kafka.connection import PROPERTIES_ENV, ConnectionSettingsError, KafkaConnection, resolve


class ConfigError(ValueError):
    """The config file cannot be used; the message names the key and the problem."""


class _Strict(BaseModel):
    # A typo in a key is an error, not a silently ignored setting. A field's description is the
    # docstring under it.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class KafkaConfig(_Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "stream-infer"
    """Consumer group and Faust app id; workers sharing it split partitions."""
    replication_factor: int = Field(1, ge=1)
    """For the topics the worker creates (outputs, state changelogs); at most the cluster's broker count."""
    min_insync_replicas: int | None = Field(None, ge=1)
    """min.insync.replicas of the topics the worker creates; default min(2, replication_factor), so
    acks=all needs two copies where there can be two."""
    transaction_timeout_ms: int = Field(10_000, ge=1_000, le=900_000)
    """Checkpoint transactions of a worker killed inside one are aborted by the broker this long after
    they began; until then the partitions' next owner waits to restore their state (and exactly-once
    readers wait too)."""
    producer: dict[str, str | int | bool] = Field(default_factory=dict)
    """Extra librdkafka producer settings."""
    properties_file: Path | None = None
    """librdkafka properties file (the format `kcat -F` reads) with the connection's security
    settings; relative to the config file. $STREAM_INFER_KAFKA_PROPERTIES or --kafka-properties
    replace it."""
    client: dict[str, str | int | bool] = Field(default_factory=dict)
    """Connection settings inline ([kafka.client]: security.protocol, sasl.*, ssl.*, ...), over the
    properties file's. A value may be ${env:NAME} or ${file:PATH}, so secrets stay out of the file."""
    session_timeout_ms: int = Field(10_000, ge=3_000, le=300_000)
    """A worker that stops heartbeating (crash, kill -9) keeps its partitions this long before the
    group moves them. Keep it above the cluster's group-coordinator failover time
    (broker.session.timeout.ms plus leader election): a shorter session expires during each failover
    and costs a rebalance."""

    @model_validator(mode="after")
    def _insync_within_replication(self) -> KafkaConfig:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) cannot exceed replication_factor ({self.replication_factor})"
            )
        return self

    @property
    def min_insync_replicas_for_created_topics(self) -> int:
        return self.min_insync_replicas or min(2, self.replication_factor)

    def connection(self) -> KafkaConnection:
        """Bootstrap servers and connection settings for every client the worker creates (see
        :mod:`stream_infer.kafka.connection`). Raises ConnectionSettingsError."""
        explicit = self.bootstrap_servers if "bootstrap_servers" in self.model_fields_set else None
        return resolve(bootstrap=explicit, properties_file=self.properties_file, inline=self.client)


class WorkerConfig(_Strict):
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    """HTTP port for metrics and health; 0: any free port (logged)."""
    data_dir: str = ".stream-infer/worker"
    checkpoint_interval_ms: int = Field(500, ge=10, le=60_000)
    """How often state and offsets are committed (exactly-once: also when outputs become visible)."""
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """at_least_once: outputs are visible at once; after a crash some may repeat (each names its
    input's topic, partition and offset). exactly_once: outputs are produced in the checkpoint's
    transaction, so read_committed consumers see each input's outputs once, at the next checkpoint."""
    stall_timeout_s: float = Field(60.0, gt=0, le=86_400)
    """/healthz turns 503 when a pipeline has lag and made no progress for this long."""


AggregateOp = Literal["count", "sum", "mean", "std", "min", "max", "last", "seconds_since_last", "ratio_to_mean", "seen_before"]
#: Ops that read no field (`of` must be absent); `seen_before` reads a categorical field, the rest a numeric one.
OPS_WITHOUT_FIELD = ("count", "seconds_since_last")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """`"90s"`, `"15m"`, `"1h"`, `"30d"`, `"250ms"` in milliseconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: a number and a unit (ms, s, m, h, d), e.g. '1h' or '30d'")
    ms = int(round(float(match.group(1)) * _UNIT_MS[match.group(2)]))
    if ms <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return ms


class AggregateFeature(_Strict):
    """One column: an aggregate over the key's recent events in an event-time window.

    The window of an event at time t (its `timestamp_field`) holds the event itself and the
    key's earlier events (in input order, at most `history_events` of them) whose time lies in
    (t - window, t]. count, sum, mean, std (population), min, max: over the window, the event
    included. last: `of` of the latest earlier event in the window (this event's own value when
    there is none). seconds_since_last: seconds since the latest earlier event in the window
    (the window's length when there is none). ratio_to_mean: this event's `of` over the mean of
    the earlier events' (1 when there are none or their mean is 0). seen_before: 1 when an
    earlier event in the window had the same `of` value (a categorical field), else 0.
    See docs/features.md."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    op: AggregateOp
    of: str | None = None
    """The event field aggregated; none for count and seconds_since_last."""
    window: str
    """Event-time window: a number and a unit (ms, s, m, h, d), e.g. "1h", "30d"."""

    @field_validator("window")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_ms(value)
        return value

    @model_validator(mode="after")
    def _field_matches_op(self) -> AggregateFeature:
        if self.op in OPS_WITHOUT_FIELD and self.of is not None:
            raise ValueError(f"op {self.op!r} reads no field: remove of = {self.of!r}")
        if self.op not in OPS_WITHOUT_FIELD and self.of is None:
            raise ValueError(f"op {self.op!r} needs `of`, the event field it aggregates")
        return self

    @property
    def window_ms(self) -> int:
        return duration_ms(self.window)


class FeatureSpec(_Strict):
    """How an event becomes one row of the model's input matrix.

    Row layout: one-hot columns first (in `one_hot` order, categories in listed order), then the
    numeric `fields` in order, then the `aggregates` in order. With `window` > 1 the row is the
    key's last `window` rows of the numeric fields, oldest first, flattened; a key with fewer
    rows so far is left-padded with its first row.
    """

    fields: list[str] = Field(default_factory=list)
    one_hot: dict[str, list[str]] = Field(default_factory=dict)
    window: int = Field(1, ge=1, le=10_000)
    timestamp_field: str | None = None
    """The event's time, an integer of epoch milliseconds: the clock of the aggregates' windows."""
    aggregates: list[AggregateFeature] = Field(default_factory=list)
    """Per-key event-time aggregates (see AggregateFeature), kept in the key's state."""
    history_events: int = Field(128, ge=1, le=4096)
    """Events of each key kept for the aggregates: each sees at most this many of the key's
    earlier events (exact while a key has no more than this in its longest window)."""

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.window > 1 and self.one_hot:
            raise ValueError("one_hot features are not supported together with window > 1")
        if not self.fields and not self.aggregates:
            raise ValueError("features need at least one of `fields` or `aggregates`")
        if self.aggregates:
            if self.timestamp_field is None:
                raise ValueError("aggregates need timestamp_field, the event's time in epoch milliseconds")
            if self.window > 1:
                raise ValueError("aggregates are not supported together with window > 1")
            names = [a.name for a in self.aggregates]
            if len(set(names)) != len(names):
                raise ValueError(f"aggregate names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")
        return self

    @property
    def width(self) -> int:
        """Number of columns of the model input."""
        return self.window * len(self.fields) + sum(len(c) for c in self.one_hot.values()) + len(self.aggregates)

    @property
    def numeric_of(self) -> list[str]:
        """The numeric fields the aggregates read, each once, in first-use order."""
        return list(dict.fromkeys(a.of for a in self.aggregates if a.of is not None and a.op != "seen_before"))

    @property
    def categorical_of(self) -> list[str]:
        """The categorical fields `seen_before` reads, each once, in first-use order."""
        return list(dict.fromkeys(a.of for a in self.aggregates if a.of is not None and a.op == "seen_before"))

    @property
    def required_fields(self) -> list[str]:
        """Every event field the featurizer reads (the schema must require each)."""
        one_hot = list(self.one_hot)
        stamp = [self.timestamp_field] if self.timestamp_field else []
        return list(dict.fromkeys([*one_hot, *self.fields, *stamp, *self.numeric_of, *self.categorical_of]))


class BatchingConfig(_Strict):
    """Micro-batching and backpressure. The controller (see stream_infer.controller) moves the
    batch size between a latency size and `max_batch_size` from the consumer lag it measures."""

    max_batch_size: int = Field(256, ge=1, le=65_536)
    """The cap: the controller never exceeds it."""
    max_wait_ms: float = Field(20.0, ge=0, le=60_000)
    """The longest any batch waits to fill; the default latency budget is a quarter of it
    (throughput mode waits at most the budget)."""
    adaptive: bool = True
    """false: always max_batch_size, no waiting (the controller is off)."""
    latency_budget_ms: float | None = Field(None, gt=0, le=60_000)
    """Latency mode uses the largest batch whose measured cost (whole batch path, and inference
    alone) is at most this, and a fetch of two or more events may wait this long for more (a lone
    event never waits); throughput mode waits at most this long for a batch to fill; batches whose
    inference fits it run on the event loop. Default max_wait_ms / 4."""
    max_in_flight_events: int = Field(50_000, ge=1, le=10_000_000)
    """Events fetched but not yet acknowledged; at this bound the worker pauses its partitions until
    half drained."""
    max_in_flight_mb: float = Field(64.0, gt=0, le=65_536)
    """The same bound in megabytes of fetched values (after decompression): large values pause the
    partitions long before max_in_flight_events does."""

    @property
    def max_in_flight_bytes(self) -> int:
        return int(self.max_in_flight_mb * 1024 * 1024)

    @property
    def latency_budget_s(self) -> float:
        """latency_budget_ms in seconds, or its default, max_wait_ms / 4."""
        return (self.latency_budget_ms or self.max_wait_ms / 4) / 1000


class StalenessConfig(_Strict):
    """Off by default (max_event_age_ms = 0). Events older than the bound (now minus the record's
    timestamp) are skipped, or sampled (1 in `sample_every` kept); every skipped event is counted
    and summarised on the `skipped` topic. With windows, skipped events are not in the key's window."""

    max_event_age_ms: int = Field(0, ge=0)
    """0: off; every event is processed whatever its age."""
    policy: Literal["skip", "sample"] = "skip"
    sample_every: int = Field(10, ge=2, le=1_000_000)
    """sample: keep 1 stale event in this many."""


class StateConfig(_Strict):
    """Bounds on the per-key state (windows, alert debounce) one worker holds for a pipeline; both
    off by default (0). An expired or evicted key is forgotten in memory and tombstoned in the
    changelog at the next checkpoint; if it comes back it starts a new window, as a never-seen key
    does. See docs/state.md."""

    key_ttl_ms: int = Field(0, ge=0)
    """0: off. A key whose newest event is this much older than the newest event of its input
    partition (event time: the features' timestamp_field where aggregates read one, else the
    records' Kafka timestamps; capped at the worker's clock) expires. With aggregates, keep it
    above the longest window plus the lateness to expect, so an expiry changes no feature."""
    max_keys: int = Field(0, ge=0)
    """0: off. The most keys one worker holds for this pipeline (all its partitions together): past
    it the least recently seen keys are evicted after each batch. Keys in use by the batches being
    processed are never evicted, so between batches the count may exceed this by their keys."""


class TopicsConfig(_Strict):
    predictions: str
    alerts: str | None = None
    dead_letters: str
    review: str | None = None
    skipped: str | None = None
    """Summaries of stale events skipped; default <pipeline>.skipped."""


class AlertRule(_Strict):
    """Alert on one key when `score` breaches `threshold` on `consecutive` events in a row; then stay
    silent for that key (one alert per episode) until `rearm_after` non-breaching events in a row."""

    name: str
    score: str
    """Name of the prediction output the rule reads."""
    direction: Literal["above", "below"]
    threshold: float
    consecutive: int = Field(1, ge=1, le=1000)
    rearm_after: int = Field(1, ge=1, le=100_000)
    severity: Literal["info", "warning", "critical"] = "warning"


class OutputSpec(_Strict):
    """Turns the model's raw outputs into named prediction fields.

    regression: `score_name` = outputs[`output`][:, 0].
    classification: `score_name` = outputs[`output`][:, `positive_class`], plus `label` = score >= threshold,
    and `review` = review_low <= score < threshold (when review_low is set).
    """

    kind: Literal["regression", "classification"]
    output: str
    score_name: str
    positive_class: int = Field(1, ge=0)
    threshold: float | None = None
    review_low: float | None = None
    echo: list[str] = Field(default_factory=list)
    """Input fields copied into each prediction and alert under `input` (null where an event
    lacks one), so a consumer can join a decision to its event without Kafka offsets."""

    @model_validator(mode="after")
    def _classification_needs_threshold(self) -> OutputSpec:
        if self.kind == "classification" and self.threshold is None:
            raise ValueError("classification outputs need a threshold")
        if self.review_low is not None and self.threshold is not None and self.review_low >= self.threshold:
            raise ValueError("review_low must be below threshold")
        return self


class EngineConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(1, ge=0, le=256)
    """0 lets ONNX Runtime choose."""


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    input_topic: str
    schema_file: Path = Field(alias="schema")
    """JSON Schema of the input event."""
    key_field: str
    model: Path
    max_message_bytes: int = Field(65_536, ge=64, le=900_000)
    """Longer input values go to the DLQ as `oversized`."""
    max_key_bytes: int = Field(1024, ge=1, le=65_536)
    """Longer Kafka keys go to the DLQ as `oversized_key`."""
    sequence_field: str | None = None
    """An integer field that increases per key (e.g. `cycle`): an event whose value is not greater
    than the highest its key has seen is out of order (a replay, a duplicate, a clock gone back).
    None: not checked."""
    out_of_order: Literal["dead_letter", "accept"] = "dead_letter"
    """What an out-of-order event gets: the DLQ (reason `out_of_order`), or processed as usual."""
    features: FeatureSpec
    batching: BatchingConfig = BatchingConfig()
    topics: TopicsConfig
    outputs: OutputSpec
    alert: AlertRule | None = None
    engine: EngineConfig = EngineConfig()
    staleness: StalenessConfig = StalenessConfig()
    state: StateConfig = StateConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _alert_needs_topic(self) -> PipelineConfig:
        if self.alert is not None and self.topics.alerts is None:
            raise ValueError("an alert rule needs topics.alerts")
        if self.outputs.review_low is not None and self.topics.review is None:
            raise ValueError("outputs.review_low needs topics.review")
        if self.alert is not None and self.alert.score != self.outputs.score_name:
            raise ValueError(f"alert.score {self.alert.score!r} is not an output (have {self.outputs.score_name!r})")
        return self

    @property
    def skipped_topic(self) -> str:
        return self.topics.skipped or f"{self.name}.skipped"

    @property
    def stateful(self) -> bool:
        """Whether the pipeline keeps per-key state (windows or alert debounce) across events."""
        return (
            self.features.window > 1 or bool(self.features.aggregates) or (self.alert is not None and self.alert.consecutive > 1)
        )


class Config(_Strict):
    kafka: KafkaConfig = KafkaConfig()
    worker: WorkerConfig = WorkerConfig()
    pipelines: list[PipelineConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _transactions_outlive_checkpoints(self) -> Config:
        if self.kafka.transaction_timeout_ms < 2 * self.worker.checkpoint_interval_ms:
            raise ValueError(
                f"kafka.transaction_timeout_ms ({self.kafka.transaction_timeout_ms}) must be at least twice "
                f"worker.checkpoint_interval_ms ({self.worker.checkpoint_interval_ms}): a transaction spans a checkpoint interval"
            )
        return self

    @field_validator("pipelines")
    @classmethod
    def _unique(cls, pipelines: list[PipelineConfig]) -> list[PipelineConfig]:
        for attr in ("name", "input_topic"):
            seen = [getattr(p, attr) for p in pipelines]
            dupes = {x for x in seen if seen.count(x) > 1}
            if dupes:
                raise ValueError(f"pipeline {attr}s must be unique; repeated: {sorted(dupes)}")
        return pipelines


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_config(path: str | Path, *, kafka_properties: str | Path | None = None) -> Config:
    """Read, validate and resolve a config file. Raises ConfigError with key and problem.

    `kafka_properties` (`--kafka-properties`), else $STREAM_INFER_KAFKA_PROPERTIES, replaces
    `kafka.properties_file`; the connection settings are read and checked here, so a missing file
    or environment variable fails the load."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
        raise ConfigError(f"{path}: {_key_path(first['loc'])}: {first['msg']}{more}") from None

    base = path.resolve().parent
    pipelines = [
        p.model_copy(update={"model": (base / p.model).resolve(), "schema_file": (base / p.schema_file).resolve()})
        for p in config.pipelines
    ]
    kafka = config.kafka
    if env := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        kafka = kafka.model_copy(update={"bootstrap_servers": env})
    if properties := kafka_properties or os.environ.get(PROPERTIES_ENV):
        kafka = kafka.model_copy(update={"properties_file": Path(properties).resolve()})
    elif kafka.properties_file is not None:
        kafka = kafka.model_copy(update={"properties_file": (base / kafka.properties_file).resolve()})
    try:
        kafka.connection()
    except ConnectionSettingsError as err:
        raise ConfigError(f"{path}: kafka: {err}") from None
    for i, p in enumerate(pipelines):
        for label, file in (("model", p.model), ("schema", p.schema_file)):
            if not file.is_file():
                raise ConfigError(f"{path}: pipelines[{i}].{label}: file {file} does not exist")
        try:
            schema = orjson.loads(p.schema_file.read_bytes())
            fastjsonschema.compile(schema)
        except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaDefinitionException, TypeError, ValueError) as err:
            raise ConfigError(f"{path}: pipelines[{i}].schema: file {p.schema_file} is not a valid JSON Schema: {err}") from None
        features = p.features
        required = set(schema.get("required", ())) if isinstance(schema, dict) else set()
        read_by_aggregates = (
            [features.timestamp_field, *features.numeric_of, *features.categorical_of] if features.aggregates else []
        )
        missing = [f for f in read_by_aggregates if f not in required]
        if missing:
            raise ConfigError(
                f"{path}: pipelines[{i}].features: the aggregates read {missing}, which the schema {p.schema_file.name} "
                "does not require: add them to its `required` list"
            )
    return config.model_copy(update={"pipelines": pipelines, "kafka": kafka})
