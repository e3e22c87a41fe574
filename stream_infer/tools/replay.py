"""Feed a bundled data set into a Kafka topic as events, at a chosen rate or as fast as possible.

Data sets (see stream_infer/datasets/README.md for sources and licenses):

* ``cmapss-test`` / ``cmapss-train``: NASA C-MAPSS FD001, one event per engine per cycle, key =
  unit. Events are interleaved by cycle (every engine's cycle 1, then every engine's cycle 2, ...)
  as a fleet reporting in parallel would; each engine's own events stay in cycle order.
* ``ai4i``: AI4I 2020, one event per machine reading, key = product_id, labels removed.
* ``transactions``: simulated card payments (:mod:`stream_infer.datasets.transactions`), one event
  per transaction in event-time order, key = card_id, labels removed unless asked for. Generated
  from :class:`SimulatorSettings` (default: seed 1, 1000 customers, 30 days).

Events go to Kafka (:func:`replay`) or to a JSON-lines file (:func:`write_jsonl`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson
from confluent_kafka import Producer

from stream_infer.datasets import AI4I_LABEL_FIELDS, CMAPSS_COLUMNS, load_ai4i, load_cmapss
from stream_infer.datasets.transactions import SimulatorSettings, transaction_count, transaction_events

DATASETS = ("cmapss-test", "cmapss-train", "ai4i", "transactions")

KeyedEvent = tuple[bytes, bytes]  # (key, JSON value)


def cmapss_events(name: str) -> Iterator[KeyedEvent]:
    data = load_cmapss(name)
    order = sorted(range(len(data)), key=lambda i: (data[i, 1], data[i, 0]))  # (cycle, unit)
    for i in order:
        row = data[i]
        event = {"schema_version": 1, "unit": int(row[0]), "cycle": int(row[1])}
        event.update(zip(CMAPSS_COLUMNS[2:], row[2:].tolist()))
        yield str(event["unit"]).encode(), orjson.dumps(event)


def ai4i_events() -> Iterator[KeyedEvent]:
    labels = set(AI4I_LABEL_FIELDS.values())
    for record in load_ai4i():
        event = {"schema_version": 1, **{k: v for k, v in record.items() if k not in labels}}
        yield event["product_id"].encode(), orjson.dumps(event)


def dataset_events(dataset: str, settings: SimulatorSettings | None = None, *, labels: bool = False) -> Iterator[KeyedEvent]:
    """The replay events of `dataset` as (key, JSON value), in replay order.

    `settings` and `labels` are for ``transactions`` only (None: the default settings); with
    another data set they raise ValueError."""
    if dataset == "transactions":
        return transaction_events(settings or SimulatorSettings(), labels=labels)
    if settings is not None or labels:
        raise ValueError(f"simulator settings and labels apply to the transactions data set, not {dataset!r}")
    if dataset == "ai4i":
        return ai4i_events()
    if dataset in ("cmapss-test", "cmapss-train"):
        return cmapss_events(dataset.split("-")[1])
    raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")


def dataset_size(dataset: str, settings: SimulatorSettings | None = None) -> int:
    """How many events :func:`dataset_events` gives for the same arguments (``transactions``
    simulates the run to count it; the run is cached for the events that follow)."""
    if dataset == "transactions":
        return transaction_count(settings or SimulatorSettings())
    if settings is not None:
        raise ValueError(f"simulator settings apply to the transactions data set, not {dataset!r}")
    return {"cmapss-test": 13_096, "cmapss-train": 20_631, "ai4i": 10_000}[dataset]


def produce_waiting(producer: Producer, topic: str, key: bytes | None, value: bytes) -> None:
    """Produce one message; when the local queue is full, serve deliveries and retry (never drop)."""
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(0.05)


def paced(events: Iterable[KeyedEvent], *, rate: float | None = None, limit: int | None = None) -> Iterator[KeyedEvent]:
    """The first `limit` events (None: all), each released when due at `rate` events/s (None: at once).

    Pacing is against a schedule (event i is due at start + i/rate), so a slow moment is caught up
    instead of lowering the average rate.
    """
    started = time.monotonic()
    released = 0
    for event in events:
        if limit is not None and released >= limit:
            return
        if rate:
            delay = started + released / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield event
        released += 1


def replay(
    producer: Producer,
    topic: str,
    events: Iterable[KeyedEvent],
    *,
    rate: float | None = None,
    limit: int | None = None,
    progress: Any = None,
) -> int:
    """Produce events to `topic`; `rate` events/s (None: as fast as possible), at most `limit`.
    Returns the count once the broker has acknowledged every one (RuntimeError if not within 60 s).
    `progress` (a tqdm bar) is advanced once per event."""
    sent = 0
    for key, value in paced(events, rate=rate, limit=limit):
        produce_waiting(producer, topic, key, value)
        producer.poll(0)
        sent += 1
        if progress is not None:
            progress.update(1)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} event(s) not acknowledged by the broker within 60 s")
    return sent


def write_jsonl(
    out: IO[bytes],
    events: Iterable[KeyedEvent],
    *,
    rate: float | None = None,
    limit: int | None = None,
    progress: Any = None,
) -> int:
    """Write each event's JSON value as one line (the key is the event's own key field, so it is
    not written); paced and limited as :func:`replay`. Returns the count."""
    written = 0
    for _, value in paced(events, rate=rate, limit=limit):
        out.write(value + b"\n")
        written += 1
        if progress is not None:
            progress.update(1)
    out.flush()
    return written


@dataclass(frozen=True)
class _BadFields:
    """Where bad_events() breaks a data set's first event."""

    numeric: str  # a number field: made NaN, 1e39, and a string
    not_a_number: str  # the string put in `numeric` (wrong_type)
    required: str  # a required field left out (schema_violation)
    huge_reason: str  # the reason for 1e39 in `numeric`: schema_violation when the schema bounds it
    extra: tuple[tuple[str, dict[str, Any]], ...] = ()  # more (reason, fields replaced)


# cmapss: s2 is unbounded, so 1e39 passes the schema and the float32 finite check catches it.
_CMAPSS_BAD = _BadFields("s2", "hot", "s3", "non_finite_number")
_BAD_FIELDS = {
    "cmapss-test": _CMAPSS_BAD,
    "cmapss-train": _CMAPSS_BAD,
    "ai4i": _BadFields("torque_nm", "hot", "tool_wear_min", "schema_violation"),
    "transactions": _BadFields(
        "amount",
        "12.5",
        "tx_id",
        "schema_violation",
        extra=(("schema_violation", {"amount": -12.5}), ("schema_violation", {"currency": "XXX"})),
    ),
}


def bad_events(dataset: str) -> list[tuple[str, bytes | None, bytes]]:
    """One event of every dead-letter class, built from a valid event of `dataset`:
    (the reason the worker must give, key, value). Used by the demo and the tests."""
    key, good = next(iter(dataset_events(dataset)))
    event = orjson.loads(good)
    fields = _BAD_FIELDS[dataset]
    numeric = fields.numeric
    wrong_type = dict(event, **{numeric: fields.not_a_number})
    no_field = {k: v for k, v in event.items() if k != fields.required}
    future = dict(event, schema_version=99)
    oversized = dict(event, padding="x" * 70_000)
    field_text = orjson.dumps(numeric) + b":"
    nan_text = good.replace(field_text + orjson.dumps(event[numeric]), field_text + b"NaN", 1)
    return [
        ("invalid_encoding", key, b"\xff\xfe" + good),
        ("invalid_json", key, good[: len(good) // 2]),
        ("non_finite_number", key, nan_text),
        # A finite double beyond float32's range.
        (fields.huge_reason, key, orjson.dumps(dict(event, **{numeric: 1e39}))),
        ("wrong_type", key, orjson.dumps(wrong_type)),
        ("schema_violation", key, orjson.dumps(no_field)),
        *((reason, key, orjson.dumps(dict(event, **changes))) for reason, changes in fields.extra),
        ("unknown_schema_version", key, orjson.dumps(future)),
        ("unknown_schema_version", key, orjson.dumps(dict(event, schema_version=True))),
        ("missing_key", None, good),
        ("oversized", key, orjson.dumps(oversized)),
        ("oversized_key", key * (2048 // len(key) + 1), good),
        ("invalid_key", b"\xff" + key, good),
        ("key_mismatch", key + b"9", good),  # the key of another engine, product or card
        ("key_mismatch", key + "\u200b".encode(), good),  # a zero-width space: looks equal, is not
    ]
