"""The event stream the fault trials feed, and the predictions and alerts an uninterrupted run gives for it.

Stream: C-MAPSS FD001 test (13,096 events, 100 engines) in replay order, looped as long as a trial
needs. Loop n renames engine u to u + n * UNIT_STRIDE, so every loop is a fleet of new engines
whose windows start empty: the prediction for an event then depends only on its base engine and
cycle, never on how many loops came before, and one reference per (base unit, cycle) serves
every loop. The same holds for alerts: the rule's debounce state is per key, so a loop's engines
start neutral and raise the same alerts at the same (base unit, cycle) as loop 0's.

Reference: the `engines` pipeline run in process (no Kafka, no changelog) over the base data set
in order, on one partition. The model reads a key's last `window` cycles, so only per-key order
matters, and one partition keeps it; the batch boundaries do not change any prediction (the
pipeline holds batched and per-event windows bit-equal, and inference is row by row; the alert
rule walks each key's events in input order). An alert is identified by the (unit, cycle) of the
last input of its run (the event that raised it) and carries that event's score. The result is
cached in the work dir under a key that changes with the model, schema, feature, output and alert
settings and with the file's format, so a new model, rule or format never meets an old reference.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from stream_infer.config import PipelineConfig
from stream_infer.records import InputRecord
from stream_infer.tools.replay import dataset_events

log = logging.getLogger(__name__)

DATASET = "cmapss-test"
# Engine ids of loop n are u + n * UNIT_STRIDE; the data set's ids are 1..100, far below it.
UNIT_STRIDE = 1000
# Batch size of the in-process run: large enough to be quick, small enough to keep memory flat.
REFERENCE_BATCH = 512

# Version of the cached file's layout: part of its name and key, so a cache of an older layout
# (version 1: predictions only, no alerts) is recomputed rather than misread.
REFERENCE_FORMAT = 2

UnitCycle = tuple[int, int]  # (base engine unit, cycle)


@dataclass(frozen=True)
class Reference:
    """What an uninterrupted run gives for one loop of the stream.

    predictions: score per (unit, cycle) of every event. alerts: score per (unit, cycle) of the
    event that raised an alert (the last input of its run); at most one alert per event."""

    predictions: dict[UnitCycle, float]
    alerts: dict[UnitCycle, float]


class EventStream:
    """The looped data set: event i is base event i % N of loop i // N (see the module docstring)."""

    def __init__(self, base: Sequence[dict] | None = None) -> None:
        self.base: list[dict] = list(base) if base is not None else [orjson.loads(v) for _, v in dataset_events(DATASET)]
        if not self.base:
            raise ValueError("the event stream needs at least one base event")

    def __len__(self) -> int:
        """Events in one loop."""
        return len(self.base)

    def identity(self, index: int) -> UnitCycle:
        """(base unit, cycle) of stream event `index`: the reference's key for its prediction."""
        event = self.base[index % len(self.base)]
        return event["unit"], event["cycle"]

    def event(self, index: int) -> tuple[bytes, bytes]:
        """(Kafka key, JSON value) of stream event `index`; key = the renamed unit, as the schema requires."""
        loop, position = divmod(index, len(self.base))
        event = self.base[position]
        unit = event["unit"] + loop * UNIT_STRIDE
        return str(unit).encode(), orjson.dumps(dict(event, unit=unit))


class RecordingProducer:
    """What the pipeline needs of a producer when Kafka is not involved: it keeps the messages,
    and every one counts as acknowledged at once."""

    def __init__(self, refuse: Callable[[tuple], bool] | None = None) -> None:
        self.messages: list[tuple] = []
        self.refuse = refuse  # which messages produce() refuses, as librdkafka does one too large

    def send_batch(self, messages, on_rejected=None) -> int:
        for index, message in enumerate(messages):
            current = message
            while current is not None:
                if self.refuse is None or not self.refuse(current):
                    self.messages.append(current)
                    break
                if on_rejected is None:
                    raise ValueError("message refused")
                current = on_rejected(index, current, "Broker: Message size too large")
        return len(messages)

    async def wait_acknowledged(self) -> None:
        return None

    def idle(self) -> bool:
        return True


def compute_reference(config: PipelineConfig, stream: EventStream, *, batch: int = REFERENCE_BATCH) -> Reference:
    """Run the pipeline in process over one loop of `stream`, in order, on partition 0; returns
    the score (`outputs.<score_name>`) per (unit, cycle), and the alerts (their `score`) per
    (unit, cycle) of the event that raised them. Raises if any event is not predicted (a dead
    letter in the data set would make the reference incomplete) or if two alerts name the same
    event (the rule raises at most one per event; two would be lost in the mapping)."""
    from stream_infer.stages.pipeline import Pipeline  # heavy (ONNX Runtime): only when a reference is computed

    producer = RecordingProducer()
    pipeline = Pipeline(config, producer, changelog=None)  # type: ignore[arg-type]
    pipeline.partitions.loaded.add(0)  # partition 0 is "restored" (empty): no changelog to read
    records = []
    for offset in range(len(stream)):
        key, value = stream.event(offset)
        records.append(InputRecord(key=key, value=value, topic="reference", partition=0, offset=offset, timestamp_ms=0))

    async def run_all() -> None:
        for start in range(0, len(records), batch):
            await pipeline.process(records[start : start + batch], time.monotonic())

    try:
        asyncio.run(run_all())
    finally:
        pipeline.close()
    score = config.outputs.score_name
    predictions: dict[UnitCycle, float] = {}
    alerts: dict[UnitCycle, float] = {}
    for topic, _key, value, _headers in producer.messages:
        if topic == config.topics.predictions:
            body = orjson.loads(value)
            predictions[stream.identity(body["source"]["offset"])] = body["outputs"][score]
        elif config.topics.alerts is not None and topic == config.topics.alerts:
            body = orjson.loads(value)
            # Offsets of this run are stream indices (one partition, from 0): the last input is
            # the event whose score completed the run.
            identity = stream.identity(body["inputs"][-1]["offset"])
            if identity in alerts:
                raise RuntimeError(f"the reference run raised two alerts for (unit, cycle) {identity}")
            alerts[identity] = body["score"]
    missing = len(stream) - len(predictions)
    if missing:
        raise RuntimeError(f"the reference run left {missing} of {len(stream)} events without a prediction")
    return Reference(predictions, alerts)


def reference_key(config: PipelineConfig, stream: EventStream) -> str:
    """Changes whenever a prediction or an alert could: model bytes, schema bytes, features,
    outputs, the alert rule, data, and the cached file's format."""
    digest = hashlib.sha256()
    digest.update(f"format:{REFERENCE_FORMAT}".encode())
    digest.update(Path(config.model).read_bytes())
    digest.update(Path(config.schema_file).read_bytes())
    digest.update(config.features.model_dump_json().encode())
    digest.update(config.outputs.model_dump_json().encode())
    digest.update((config.alert.model_dump_json() if config.alert is not None else "no alert").encode())
    digest.update(f"{DATASET}:{len(stream)}".encode())
    return digest.hexdigest()[:16]


def load_reference(config: PipelineConfig, stream: EventStream, cache_dir: Path) -> Reference:
    """The reference from `cache_dir` when its key matches, else computed and cached there (as
    `reference-v<format>-<pipeline>-<key>.json`)."""
    key = reference_key(config, stream)
    path = cache_dir / f"reference-v{REFERENCE_FORMAT}-{config.name}-{key}.json"
    if path.exists():
        data = json.loads(path.read_text())
        return Reference(
            predictions={(unit, cycle): value for unit, cycle, value in data["predictions"]},
            alerts={(unit, cycle): value for unit, cycle, value in data["alerts"]},
        )
    started = time.monotonic()
    reference = compute_reference(config, stream)
    log.info(
        "reference computed",
        extra={
            "events": len(reference.predictions),
            "alerts": len(reference.alerts),
            "seconds": round(time.monotonic() - started, 2),
        },
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "format": REFERENCE_FORMAT,
                "key": key,
                "dataset": DATASET,
                "predictions": [[unit, cycle, value] for (unit, cycle), value in sorted(reference.predictions.items())],
                "alerts": [[unit, cycle, value] for (unit, cycle), value in sorted(reference.alerts.items())],
            }
        )
    )
    tmp.replace(path)  # atomic: a trial started meanwhile never reads half a file
    return reference
